"""The review archive (创卫档案): one zip per span and content area, ready to print.

The national re-review audits years of records per content area (十项内容): "true, complete
and continuous". `build_archive` takes plain records (as the notify service keeps them
from the events it consumed) and returns the zip's bytes:

    00-目录.md              index: what each file holds, how many records, the span and area
    01-检查记录.csv          every inspection in time order, with inspectors, score, findings
                            and the photo references of each finding
    02-整改任务.csv          every task found in the span: deadline, close-out (销号), who
                            verified it, before- and after-photo references
    03-排名.csv              the monthly scores and ranks as published
    04-月度通报/<月>.pdf      each month's latest bulletin (embedded CJK font: prints anywhere)
    99-完整性报告.md         gaps: weeks without an inspection in the area, tasks closed
                            without close-out evidence, tasks still open

CSV files carry a BOM (Excel reads the Chinese) and formula-looking text is quoted.
Pure: no database, no nameko.
"""
from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from services.contracts.checklists import TEN_AREAS, area_of
from services.contracts.periods import CST, Period, PeriodKind

FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class ArchiveInput:
    node: str
    node_name: str
    since: Period
    until: Period
    area: str | None
    inspections: list[dict] = field(default_factory=list)   # inspection_submitted payloads
    tasks: list[dict] = field(default_factory=list)         # task records (see operations)
    scores: list[dict] = field(default_factory=list)
    bulletins: list[dict] = field(default_factory=list)     # {"period", "revision", "data"}


def span_window(since: Period, until: Period) -> tuple[datetime, datetime]:
    start = since.instants()[0].astimezone(timezone.utc)
    end = until.instants()[1].astimezone(timezone.utc)
    return start, end


def _instant(value) -> datetime:
    """Stored times are ISO text with any offset (or datetimes): order them as instants."""
    if not value:
        return datetime.min.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _when(value) -> str:
    if not value:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(CST).strftime("%Y-%m-%d %H:%M")


def _cell(value):
    if isinstance(value, str) and value.startswith(FORMULA_LEADS):
        return "'" + value
    return value


def _csv(header: list[str], rows: list[list]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([_cell(v) for v in row] for row in rows)
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


def _photos(evidence) -> str:
    return "；".join(e.get("uri", "") for e in evidence or [])


def inspection_area(payload: dict) -> set[str]:
    """The areas an inspection covers: its checklist's, or each finding's on the ten-areas list."""
    code = payload["checklist"]["code"]
    found = {area_of(code, f.get("category_code")) for f in payload.get("findings", [])} - {None}
    if code == "national-ten-areas":
        return found or set(TEN_AREAS)  # a clean ten-areas check covers all ten
    area = area_of(code)
    return {area} if area else set()


def weeks_in(start: datetime, end: datetime) -> list[Period]:
    weeks, moment = [], start
    while moment < end:
        week = Period.containing(PeriodKind.week, moment.astimezone(CST))
        if not weeks or weeks[-1].key != week.key:
            weeks.append(week)
        moment += timedelta(days=1)
    return weeks


def build_archive(data: ArchiveInput, render_pdf) -> tuple[bytes, dict]:
    """The zip and its completeness report as data ({"weeks_without_inspection", ...})."""
    start, end = span_window(data.since, data.until)
    area_label = f"{data.area} {TEN_AREAS[data.area]}" if data.area else "全部十项内容"
    inspections = sorted((i for i in data.inspections if data.area is None or data.area in inspection_area(i)),
                         key=lambda i: (_instant(i["inspected_at"]), str(i["inspection_id"])))
    kept_ids = {str(i["inspection_id"]) for i in inspections}
    tasks = sorted((t for t in data.tasks if t["inspection_id"] in kept_ids or (
        data.area is not None and area_of(t.get("checklist_code") or "", t["category_code"]) == data.area)),
        key=lambda t: (_instant(t["found_at"]), t["task_id"]))

    inspection_rows = []
    for i in inspections:
        findings = i.get("findings", [])
        inspection_rows.append([
            _when(i["inspected_at"]), str(i["inspection_id"]), i["subject"]["name"], i["subject"]["node"],
            (i.get("place") or {}).get("name", ""), i["kind"], i["checklist"]["code"], "、".join(i["inspectors"]),
            f"{i['score']:.2f}", len(findings),
            "；".join(f"{f['item_code']} {f['item_text']}（{f['findings']}处，扣{f['deduction']:.2f}分）"
                     for f in findings),
            "；".join(filter(None, (_photos(f.get("evidence")) for f in findings))),
            "历史导入" if i.get("historic") else ""])
    task_rows = [[
        _when(t["found_at"]), t["task_id"], t["subject_name"], t.get("place_name") or "", t["item_text"],
        t["category_name"], _when(t["deadline_at"]), t["status"], _when(t["closed_at"]), t.get("verified_by") or "",
        _photos(t.get("evidence")), _photos(t.get("after_evidence")), t.get("relapse_of") or ""] for t in tasks]
    score_rows = [[s["period"], s["subject_name"], s["subject_node"], "" if s["score"] is None else f"{s['score']:.2f}",
                   s["rank"] or "", s["peers"], "是" if s["vetoed"] else "", "；".join(s.get("veto_reasons") or [])]
                  for s in sorted(data.scores, key=lambda s: (s["period"], s["rank"] or 10 ** 6, s["subject_name"]))]

    # Completeness: every week of the span needs an inspection in the area; every closed task
    # its after-photos (销号佐证); an open one is listed as open.
    inspected_weeks = {Period.containing(PeriodKind.week, _instant(i["inspected_at"]).astimezone(CST)).key
                       for i in inspections}
    now = datetime.now(timezone.utc)
    gap_weeks = [w for w in weeks_in(start, min(end, now)) if w.key not in inspected_weeks]
    unevidenced = [t for t in tasks if t["status"] == "closed" and not t.get("after_evidence")]
    still_open = [t for t in tasks if t["status"] != "closed"]
    report = {"weeks_without_inspection": [w.key for w in gap_weeks],
              "closed_without_evidence": [t["task_id"] for t in unevidenced],
              "still_open": [t["task_id"] for t in still_open]}

    title = f"{data.node_name}创卫档案（{data.since.key} 至 {data.until.key}，{area_label}）"
    lines = [f"# {title} — 完整性报告", "",
             f"## 一、无检查记录的周（{len(gap_weeks)}周）"]
    for w in gap_weeks:
        w_start, w_end = (m.astimezone(CST) for m in w.instants())
        lines.append(f"- {w.key}（{w_start:%Y-%m-%d} 至 {(w_end - timedelta(days=1)):%Y-%m-%d}）")
    if not gap_weeks:
        lines.append("- 无")
    lines += ["", f"## 二、已销号但无整改佐证（整改后照片）的问题（{len(unevidenced)}项）"]
    lines += [f"- {t['task_id']}：{t['subject_name']} {t['item_text']}（销号 {_when(t['closed_at'])}）"
              for t in unevidenced] or ["- 无"]
    lines += ["", f"## 三、尚未销号的问题（{len(still_open)}项）"]
    lines += [f"- {t['task_id']}：{t['subject_name']} {t['item_text']}（期限 {_when(t['deadline_at'])}）"
              for t in still_open] or ["- 无"]
    report_md = "\n".join(lines) + "\n"

    files: list[tuple[str, bytes, str]] = [
        ("01-检查记录.csv", _csv(["检查时间", "检查编号", "检查对象", "区划代码", "点位", "检查类型", "检查表", "检查人员",
                                  "得分", "问题项数", "问题", "照片", "来源"], inspection_rows),
         f"检查记录 {len(inspection_rows)} 条（按时间顺序，含问题照片路径）"),
        ("02-整改任务.csv", _csv(["发现时间", "任务编号", "责任主体", "点位", "问题", "问题类别", "整改期限", "状态",
                                  "销号时间", "核实人", "整改前照片", "整改后照片", "反弹(关联任务)"], task_rows),
         f"整改任务 {len(task_rows)} 项（含销号与佐证照片路径）"),
        ("03-排名.csv", _csv(["月份", "单位", "区划代码", "得分", "名次", "参评单位数", "一票否决", "否决原因"],
                             score_rows), f"月度得分与排名 {len(score_rows)} 条"),
    ]
    latest: dict[str, dict] = {}
    for b in data.bulletins:
        if b["period"] not in latest or b["revision"] > latest[b["period"]]["revision"]:
            latest[b["period"]] = b
    for period in sorted(latest):
        b = latest[period]
        files.append((f"04-月度通报/{period}-第{b['revision']}版.pdf", render_pdf(b["data"], data.node_name, b["revision"]),
                      f"{period} 月度通报（第{b['revision']}版）"))
    files.append(("99-完整性报告.md", report_md.encode("utf-8"),
                  f"完整性报告：{len(gap_weeks)} 周无检查，{len(unevidenced)} 项销号无佐证，{len(still_open)} 项未销号"))

    index = [f"# {title}", "", f"- 单位：{data.node_name}（{data.node}）",
             f"- 期间：{data.since.key} 至 {data.until.key}", f"- 内容：{area_label}",
             f"- 生成时间：{_when(now)}", "", "| 序号 | 文件 | 内容 |", "|---|---|---|"]
    index += [f"| {n} | {name} | {what} |" for n, (name, _, what) in enumerate(files, start=1)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("00-目录.md", ("\n".join(index) + "\n").encode("utf-8"))
        for name, content, _ in files:
            archive.writestr(name, content)
    return buffer.getvalue(), report
