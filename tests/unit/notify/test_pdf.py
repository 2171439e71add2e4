"""The monthly bulletin as a PDF (reportlab, an embedded subset of a free CJK TrueType font)."""
import io
import subprocess
from datetime import datetime, timezone

from pypdf import PdfReader

from services.contracts.periods import CST
from services.notify.bulletin import ScoreFact, TaskFact, assemble_bulletin
from services.notify.domain import BulletinPolicy
from services.notify import pdf as pdf_module
from services.notify.pdf import FONT, pdf_filename, render_bulletin_pdf

NAMES = ["周家山社区", "飨堂社区", "十里河社区", "贤山社区", "金牛山社区"]


def nov(day):
    return datetime(2026, 11, day, 10, tzinfo=CST)


def bulletin(subjects=NAMES, tasks=()):
    scores = [ScoreFact(f"s{i}", name, "411502008001", 95 - i * 0.5, 100, i + 1, True, None, "优秀",
                        vetoed=(i == 3), veto_reasons=("被媒体曝光",) if i == 3 else (), inputs=4)
              for i, name in enumerate(subjects)]
    previous = [ScoreFact(f"s{i}", name, "411502008001", 80, 100, len(subjects) - i, True)
                for i, name in enumerate(subjects)]
    return assemble_bulletin("2026-11", "411502008000", "金牛山街道", scores, previous, list(tasks),
                             BulletinPolicy(), datetime(2026, 12, 1, 1, tzinfo=timezone.utc)).to_dict()


def read(pdf: bytes) -> tuple[PdfReader, str]:
    reader = PdfReader(io.BytesIO(pdf))
    return reader, "\n".join(page.extract_text() for page in reader.pages)


def fonts(reader: PdfReader) -> set[str]:
    names = set()
    for page in reader.pages:
        for font in page["/Resources"]["/Font"].values():
            names.add(str(font.get_object()["/BaseFont"]).lstrip("/"))
    return names


def test_the_pdf_shows_the_title_and_the_ranking_in_order_in_chinese():
    tasks = [TaskFact("t1", "s2", "十里河社区", "十里河农贸市场公厕", "便池干净、无积便", "PT", "公共厕所", "major",
                      "open", nov(5), nov(2), nov(5), 2),
             TaskFact("t2", "s1", "飨堂社区", "飨堂菜市场", "生熟分开", "NM", "农贸市场", "minor", "open",
                      nov(20), nov(12), None, 0, None, "t0", nov(12)),
             TaskFact("t3", "s0", "周家山社区", "周家山公厕", "洗手设施完好", "PT", "公共厕所", "minor", "open",
                      nov(20), nov(13))]
    pdf = render_bulletin_pdf(bulletin(tasks=tasks), "金牛山街道创卫办", revision=2)
    assert pdf.startswith(b"%PDF")
    reader, text = read(pdf)
    assert len(reader.pages) == 1
    # A subset (six-letter tag + name) of the free font, embedded, beside reportlab's Helvetica.
    cjk = [name for name in fonts(reader) if FONT in name]
    assert len(cjk) == 1 and cjk[0][6] == "+", fonts(reader)
    assert reader.metadata.title == "金牛山街道2026年11月创卫工作月度通报"
    assert "金牛山街道2026年11月创卫工作月度通报" in text and "第2版" in text
    # The ranking table comes first: the names' first appearances are in rank order.
    positions = [text.index(name) for name in NAMES]
    assert positions == sorted(positions)
    for section in ("一、月度排名", "三、通报批评", "四、一票否决", "五、逾期未整改问题（1项）", "六、反弹问题（1项）",
                    "七、突出问题类别"):
        assert section in text
    assert "贤山社区（一票否决）" in text and "被媒体曝光" in text
    assert "↑" in text and "↓" in text            # movement against last month
    assert "便池干净、无积便" in text and "待整改" in text  # the overdue task
    assert "生熟分开" in text                      # the relapse
    assert "公共厕所" in text and "2项" in text      # the recurring category


def test_a_long_ranking_runs_over_pages_and_user_text_is_not_markup():
    names = [f"第{i:02d}社区<东片>&" for i in range(1, 61)]
    reader, text = read(render_bulletin_pdf(bulletin(subjects=names)))
    assert len(reader.pages) >= 2
    assert text.count("名次") >= 2  # the header row repeats on the next page
    positions = [text.index(name) for name in names]
    assert positions == sorted(positions)


def test_an_empty_month_still_renders():
    data = assemble_bulletin("2026-11", "411502008000", "金牛山街道", [], [], [], BulletinPolicy(),
                             datetime(2026, 12, 1, tzinfo=timezone.utc)).to_dict()
    _, text = read(render_bulletin_pdf(data))
    assert "本月无排名" in text and "无反复出现的问题类别" in text
    assert pdf_filename("411502008000", "2026-11", 3) == "bulletin-411502008000-2026-11-r3.pdf"


# --- reads the same on any viewer ---------------------------------------------------------
# A viewer without CJK fonts is imitated by poppler with a fontconfig that knows no font at
# all: only glyphs embedded in the PDF can be drawn.


def pdffonts(pdf: bytes, tmp_path) -> list[list[str]]:
    path = tmp_path / "bulletin.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(["pdffonts", str(path)], check=True, capture_output=True, text=True).stdout
    return [line.split() for line in out.splitlines()[2:]]


def title_ink(pdf: bytes, tmp_path) -> int:
    """Dark pixels in the title band of page 1, rendered at 50 dpi with no system fonts."""
    (tmp_path / "fonts.conf").write_text("<?xml version=\"1.0\"?><fontconfig></fontconfig>")
    (tmp_path / "in.pdf").write_bytes(pdf)
    env = {"FONTCONFIG_FILE": str(tmp_path / "fonts.conf"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run(["pdftoppm", "-r", "50", "-gray", "-f", "1", "-l", "1", str(tmp_path / "in.pdf"),
                    str(tmp_path / "page")], check=True, capture_output=True, env=env)
    raw = next(tmp_path.glob("page*.pgm")).read_bytes()
    magic, width, height, maxval, pixels = raw.split(maxsplit=4)
    assert magic == b"P5" and maxval == b"255"
    width, height = int(width), int(height)
    # The title sits in the top margin's next 26 pt: from 18 mm to about 30 mm down.
    top, bottom = int(18 / 25.4 * 50), int(30 / 25.4 * 50)
    band = pixels[top * width:bottom * width]
    return sum(1 for value in band if value < 128)


def test_the_chinese_title_is_drawn_from_the_embedded_font_without_any_system_font(tmp_path):
    pdf = render_bulletin_pdf(bulletin())
    rows = pdffonts(pdf, tmp_path)
    cjk = [row for row in rows if FONT in row[0]]
    # name, type, encoding, emb, sub, uni, object ID: embedded and subset.
    assert len(cjk) == 1 and cjk[0][-5:-3] == ["yes", "yes"], rows
    assert title_ink(pdf, tmp_path) > 150


def test_without_the_embedded_font_the_same_title_is_blank(tmp_path, monkeypatch):
    """The check above can fail: the old, unembedded STSong-Light draws nothing here."""
    monkeypatch.setattr(pdf_module, "font_file", lambda: None)
    monkeypatch.setattr(pdf_module, "_font_name", None)
    pdf = render_bulletin_pdf(bulletin())
    assert all(row[-5] == "no" for row in pdffonts(pdf, tmp_path) if "STSong" in row[0])
    assert title_ink(pdf, tmp_path) == 0


def test_a_stale_figure_is_marked_in_the_pdf():
    data = bulletin()
    data["ranking"][1]["stale_reason"] = "飨堂社区 (411502008006) 自 2026-11-20 16:00 起未上报"
    data["stale"] = [{"subject_id": "s1", "name": "飨堂社区", "node": "411502008006",
                      "reason": data["ranking"][1]["stale_reason"]}]
    _, text = read(render_bulletin_pdf(data, "金牛山街道创卫办", revision=1))
    flat = text.replace("\n", "")
    assert "飨堂社区（数据未更新）" in flat
    assert "数据未更新（以下单位的得分为其最后一次上报）：飨堂社区 (411502008006) 自 2026-11-20 16:00 起未上报。" in flat
    _, plain = read(render_bulletin_pdf(bulletin(), "金牛山街道创卫办", revision=1))
    assert "数据未更新" not in plain
