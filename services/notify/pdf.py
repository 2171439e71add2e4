"""The monthly bulletin (月度通报) as a PDF, drawn with reportlab from the bulletin's stored data.

The PDF embeds a subset of a freely licensed CJK TrueType font (WenQuanYi Micro Hei, from
the Debian package `fonts-wqy-microhei`, installed by `.ci/run` and the Dockerfile), so it
reads the same on every viewer: a PDF that only names a font (as reportlab's built-in
STSong-Light does) shows blank Chinese wherever the viewer lacks Adobe's CJK fonts.
`CHUANGWEI_CJK_FONT` points at another TrueType file or collection (`path` or `path#index`).
Pure: takes the data dict kept with the bulletin (`bulletin.BulletinData.to_dict()`) and
returns the PDF's bytes.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from services.notify.templates import STATUS_LABELS, cst, percent, score

log = logging.getLogger(__name__)

FONT = "WenQuanYiMicroHei"
# Looked for in this order; the first that exists is embedded.
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
)
# Only when no font file is installed: the viewer must supply the glyphs (not embedded).
FALLBACK_FONT = "STSong-Light"
_font_name: str | None = None


def font_file() -> tuple[str, int] | None:
    """The CJK font to embed: `CHUANGWEI_CJK_FONT` (`path` or `path#subfont`), else the first
    installed candidate."""
    configured = os.environ.get("CHUANGWEI_CJK_FONT")
    if configured:
        path, _, index = configured.partition("#")
        return path, int(index or 0)
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return candidate, 0
    return None


def _font() -> str:
    global _font_name
    if _font_name is None:
        found = font_file()
        if found is not None:
            pdfmetrics.registerFont(TTFont(FONT, found[0], subfontIndex=found[1]))
            _font_name = FONT
        else:
            log.warning("notify: no CJK TrueType font installed (apt fonts-wqy-microhei); bulletin PDFs fall "
                        "back to %s, which is not embedded and shows blank on viewers without it", FALLBACK_FONT)
            pdfmetrics.registerFont(UnicodeCIDFont(FALLBACK_FONT))
            _font_name = FALLBACK_FONT
    return _font_name


def _styles() -> dict[str, ParagraphStyle]:
    font = _font()
    base = ParagraphStyle("body", fontName=font, bulletFontName=font, fontSize=10.5, leading=15, wordWrap="CJK")
    return {
        "title": ParagraphStyle("title", base, fontSize=18, leading=26, alignment=TA_CENTER,
                                textColor=colors.HexColor("#b00000"), spaceAfter=4),
        "meta": ParagraphStyle("meta", base, fontSize=9.5, leading=14, alignment=TA_CENTER,
                               textColor=colors.HexColor("#555555")),
        "h2": ParagraphStyle("h2", base, fontSize=13, leading=20, spaceBefore=10, spaceAfter=4),
        "body": base,
        "item": ParagraphStyle("item", base, leftIndent=12, bulletIndent=2),
        "cell": ParagraphStyle("cell", base, fontSize=9.5, leading=13),
        "head": ParagraphStyle("head", base, fontSize=9.5, leading=13, alignment=TA_CENTER),
    }


# STSong-Light's Unicode CMap has no U+00B7 (middle dot): draw the katakana one instead.
_FALLBACK_GLYPHS = str.maketrans({"\u00b7": "\u30fb"})


def _text(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.translate(_FALLBACK_GLYPHS) if _font() == FALLBACK_FONT else text


def _p(text: Any, style: ParagraphStyle) -> Paragraph:
    return Paragraph(escape(_text(text)), style)


def _table(header: list[str], rows: list[list[Any]], widths: list[float], st: dict,
           extra: list[tuple] = ()) -> Table:
    data = [[_p(h, st["head"]) for h in header]]
    data += [[cell if isinstance(cell, Paragraph) else _p(cell, st["cell"]) for cell in row] for row in rows]
    table = Table(data, colWidths=widths, repeatRows=1)
    table.setStyle(TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.5, colors.HexColor("#999999")),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f0f0f0")),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 3), ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
        *extra,
    ]))
    return table


def _items(texts: list[str], empty: str, st: dict) -> list:
    if not texts:
        texts = [empty]
    return [Paragraph(escape(_text(t)), st["item"], bulletText="•") for t in texts]


def _period_label(period: str) -> str:
    year, month = period.split("-")
    return f"{int(year)}年{int(month)}月"


def render_bulletin_pdf(b: dict, office: str | None = None, revision: int | None = None) -> bytes:
    """The bulletin's data (as kept) drawn as an A4 PDF with the same sections as the HTML."""
    st = _styles()
    office = office or b.get("node_name") or b.get("node", "")
    story: list = [_p(b["title"], st["title"])]
    meta = f"统计期间：{_period_label(b['period'])}（{b['period']}）"
    if revision:
        meta += f"　第{revision}版"
    meta += f"　生成时间：{cst(b.get('generated_at'))}"
    story += [_p(meta, st["meta"]), Spacer(1, 4 * mm)]

    # 一、月度排名
    story.append(_p("一、月度排名", st["h2"]))
    ranking = b.get("ranking") or []
    if ranking:
        up = ParagraphStyle("up", st["cell"], alignment=TA_CENTER, textColor=colors.HexColor("#008000"))
        down = ParagraphStyle("down", up, textColor=colors.HexColor("#b00000"))
        same = ParagraphStyle("same", up, textColor=colors.black)
        rows = []
        for r in ranking:
            movement = r.get("movement")
            style = up if movement and movement > 0 else down if movement and movement < 0 else same
            rows.append([r["rank"], r["name"] + ("（一票否决）" if r.get("vetoed") else "")
                         + ("（数据未更新）" if r.get("stale_reason") else ""), score(r.get("score")),
                         r.get("grade") or "", _p(r.get("movement_text") or "", style)])
        story.append(_table(["名次", "单位", "得分", "等级", "较上月"], rows,
                            [16 * mm, 74 * mm, 24 * mm, 24 * mm, 24 * mm], st,
                            [("ALIGN", (0, 1), (0, -1), "CENTER")]))
    else:
        story.append(_p("本月无排名。", st["body"]))
    for group in b.get("other_rankings") or []:
        story += [Spacer(1, 2 * mm), _p(f"{group['label']}排名", st["body"])]
        story.append(_table(["名次", "单位", "得分", "等级"],
                            [[r["rank"], r["name"] + ("（一票否决）" if r.get("vetoed") else ""), score(r.get("score")),
                              r.get("grade") or ""] for r in group["ranking"]],
                            [16 * mm, 98 * mm, 24 * mm, 24 * mm], st, [("ALIGN", (0, 1), (0, -1), "CENTER")]))
    unranked = b.get("unranked") or []
    if unranked:
        story += [Spacer(1, 2 * mm), _p("未参加排名：" + "；".join(f"{u['name']}（{u['note']}）" for u in unranked),
                                        st["body"])]
    stale = b.get("stale") or []
    if stale:
        story += [Spacer(1, 2 * mm), _p("数据未更新（以下单位的得分为其最后一次上报）：" + "；".join(s["reason"] for s in stale)
                                        + "。", st["body"])]

    # 二、三、四
    story.append(_p("二、通报表扬", st["h2"]))
    story += _items([f"{c['name']}（第{c['rank']}名，{score(c.get('score'))}分）" for c in b.get("commended") or []],
                    "无", st)
    story.append(_p("三、通报批评", st["h2"]))
    story += _items([f"{c['name']}：{'；'.join(c.get('reasons') or [])}" for c in b.get("criticised") or []], "无", st)
    story.append(_p("四、一票否决", st["h2"]))
    story += _items([v["name"] + (f"：{'；'.join(v['reasons'])}" if v.get("reasons") else "")
                     for v in b.get("vetoed") or []], "无", st)

    # 五、逾期未整改问题
    overdue = b.get("overdue_tasks") or []
    story.append(_p(f"五、逾期未整改问题（{len(overdue)}项）", st["h2"]))
    if overdue:
        rows = [[t["subject_name"], t.get("place_name") or "", f"{t.get('category_name') or ''}：{t['item_text']}",
                 cst(t.get("deadline_at"), "%m月%d日"), t.get("urge_count", 0),
                 STATUS_LABELS.get(t.get("status"), t.get("status") or "")] for t in overdue]
        story.append(_table(["责任单位", "点位", "问题", "期限", "催办", "状态"], rows,
                            [30 * mm, 30 * mm, 56 * mm, 20 * mm, 12 * mm, 18 * mm], st,
                            [("ALIGN", (3, 1), (4, -1), "CENTER")]))
    else:
        story += _items([], "无", st)

    # 六、反弹问题
    relapsed = b.get("relapsed_tasks") or []
    story.append(_p(f"六、反弹问题（{len(relapsed)}项）", st["h2"]))
    story += _items([t["subject_name"] + (f"·{t['place_name']}" if t.get("place_name") else "") + f"：{t['item_text']}"
                     for t in relapsed], "无", st)

    # 七、突出问题类别
    story.append(_p("七、突出问题类别", st["h2"]))
    categories = b.get("top_categories") or []
    if categories:
        story.append(_table(["序号", "问题类别", "问题数"],
                            [[i, c["category_name"], f"{c['count']}项"] for i, c in enumerate(categories, start=1)],
                            [16 * mm, 90 * mm, 30 * mm], st, [("ALIGN", (0, 1), (0, -1), "CENTER")]))
    else:
        story += _items([], "无反复出现的问题类别", st)

    # 八、整改情况
    f = b.get("figures") or {}
    story.append(_p("八、整改情况", st["h2"]))
    story.append(_p(f"本月新增问题 {f.get('problems_found', f.get('tasks_opened', 0))} 项，销号 {f.get('tasks_closed', 0)} 项"
                    f"（按期 {f.get('closed_on_time', 0)} 项），销号率 {percent(f.get('close_rate'))}；"
                    f"逾期 {f.get('overdue', 0)} 项，反弹 {f.get('relapses', 0)} 项"
                    + (f"，按检查计划漏检 {f['missed_checks']} 次" if f.get("missed_checks") else "") + "。",
                    st["body"]))
    story += [Spacer(1, 8 * mm), _p(f"{office}　{cst(b.get('generated_at'), '%Y年%m月%d日')}",
                                    ParagraphStyle("sign", st["body"], alignment=2))]

    def footer(canvas, doc):
        canvas.saveState()
        canvas.setFont(_font(), 8.5)
        canvas.setFillColor(colors.HexColor("#777777"))
        canvas.drawCentredString(A4[0] / 2, 10 * mm, _text(f"{b['title']}　第{doc.page}页"))
        canvas.restoreState()

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=18 * mm,
                            bottomMargin=18 * mm, title=b["title"], author=office,
                            subject=f"月度通报 {b.get('node', '')} {b['period']}", creator="Chuangwei 创卫 notify")
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()


def pdf_filename(node: str, period: str, revision: int) -> str:
    return f"bulletin-{node}-{period}-r{revision}.pdf"

