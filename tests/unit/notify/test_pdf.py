"""The monthly bulletin as a PDF (reportlab, built-in CJK font STSong-Light)."""
import io
from datetime import datetime, timezone

from pypdf import PdfReader

from services.contracts.periods import CST
from services.notify.bulletin import ScoreFact, TaskFact, assemble_bulletin
from services.notify.domain import BulletinPolicy
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
    assert FONT in fonts(reader)
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
