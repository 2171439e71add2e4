"""Reading a history upload (历史导入): the template, row-by-row problems, an exported ledger."""
import io
from datetime import datetime

import pytest
from openpyxl import Workbook, load_workbook

from services.contracts.periods import CST
from services.inspection.imports import (COLUMNS, INSPECTIONS, LEDGER, PLACES, SUBJECTS, ImportRejected,
                                         parse_workbook, template_workbook)

NOW = datetime(2026, 11, 23, 12, tzinfo=CST)


def workbook(sheets: dict[str, list[list]]) -> bytes:
    book = Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def header(sheet: str) -> list[str]:
    return [c.header for c in COLUMNS[sheet]]


def test_the_template_has_the_four_sheets_and_its_example_rows_parse():
    book = load_workbook(io.BytesIO(template_workbook()))
    assert book.sheetnames == [SUBJECTS, PLACES, INSPECTIONS, LEDGER, "说明"]
    assert [c.value for c in book[LEDGER][1]][:3] == ["检查编号", "检查项目", "问题数"]
    assert book[LEDGER]["C1"].font.color.rgb.endswith("B00000")  # required: red
    plan = parse_workbook(template_workbook(), NOW)
    assert [(s.subject_type, s.node, s.name) for s in plan.subjects] == [("child_unit", "411502008001", "周家山社区")]
    [inspection] = plan.inspections
    assert inspection.key == "2026-03-W1-ZJS" and inspection.kind == "routine"
    assert inspection.inspectors == ["王芳", "李强"]
    assert inspection.inspected_at == datetime(2026, 3, 2, 9, 30, tzinfo=CST)
    [finding] = inspection.findings
    assert (finding.item_code, finding.findings, finding.verified_by) == ("PT-02", 2, "王芳")
    assert finding.closed_at == datetime(2026, 3, 2, 17, 0, tzinfo=CST)


def test_every_problem_is_named_by_sheet_row_and_column_and_nothing_passes():
    content = workbook({
        SUBJECTS: [header(SUBJECTS), ["居委会", "411502008001", "周家山社区"], ["下级单位", "12345", "华森社区"]],
        INSPECTIONS: [header(INSPECTIONS),
                      ["K1", "日常检查", "周家山社区", "411502008001", None, None, "public-toilet", "王芳",
                       "2026-03-02 09:30", None],
                      ["K1", "日常检查", "周家山社区", "411502008001", None, None, "public-toilet", "王芳",
                       "2026-03-09 09:30", None],
                      ["K2", "日常检查", "周家山社区", "411502008001", None, None, "public-toilet", "王芳",
                       "2027-01-01", None]],
        LEDGER: [header(LEDGER),
                 ["K1", "PT-02", 0, None, None, None, None, None, None, None, None],
                 ["K1", "PT-03", 1, None, None, None, None, None, None, None, "2026-03-01 10:00"],
                 ["K9", "PT-03", 1, None, None, None, None, None, None, None, None],
                 ["K1", "PT-04", "两", None, None, None, None, None, None, "王芳", "昨天"]],
    })
    with pytest.raises(ImportRejected) as rejected:
        parse_workbook(content, NOW)
    found = [(i.sheet, i.row, i.column) for i in rejected.value.issues]
    assert found == [
        (SUBJECTS, 2, "类型"), (SUBJECTS, 3, "区划代码"),
        (INSPECTIONS, 3, "检查编号"), (INSPECTIONS, 4, "检查时间"),
        (LEDGER, 2, "问题数"),
        (LEDGER, 3, "核实人"), (LEDGER, 3, "销号时间"),
        (LEDGER, 4, "检查编号"),
        (LEDGER, 5, "问题数"), (LEDGER, 5, "销号时间"), (LEDGER, 5, "销号时间"),
    ]
    first = rejected.value.issues[0]
    assert first.field == "考评对象!2:类型" and "下级单位" in first.reason
    assert rejected.value.issues[3].reason == "历史记录的时间不能晚于现在 (history lies in the past)"


def test_a_ledger_exported_by_a_stack_carries_its_inspections():
    exported = ["序号", "任务编号", "责任主体", "检查对象", "点位", "点位类型", "检查编号", "检查类型", "检查表",
                "检查人员", "检查对象区划", "问题类别", "检查项目", "问题描述", "检查记录", "严重程度", "问题数", "扣分",
                "发现时间", "整改期限", "状态", "亮灯", "整改措施", "整改人", "提交整改时间", "核实人", "销号时间"]
    row = [1, "t-1", "周家山社区", "周家山社区", "周家山路公厕", "公厕", "insp-1", "日常检查", "public-toilet",
           "王芳、李强", "411502008001", "环境卫生", "PT-03", "通风良好，无明显臭味", "有异味", "较重", 1, 5,
           "2026-05-04 09:30", "2026-05-05 09:30", "已销号", "", "已通风", "张伟", "2026-05-04 14:30", "王芳",
           "2026-05-04 15:30"]
    plan = parse_workbook(workbook({LEDGER: [exported, row]}), NOW)
    [inspection] = plan.inspections
    assert (inspection.key, inspection.subject_node, inspection.place_name, inspection.place_type) == (
        "insp-1", "411502008001", "周家山路公厕", "public_toilet")
    assert inspection.inspected_at == datetime(2026, 5, 4, 9, 30, tzinfo=CST)
    [finding] = inspection.findings
    assert finding.fix_submitted_at == datetime(2026, 5, 4, 14, 30, tzinfo=CST) and finding.deduction == 5


def test_not_a_workbook():
    with pytest.raises(ImportRejected) as rejected:
        parse_workbook(b"PK\x03\x04 not really", NOW)
    assert rejected.value.issues[0].column == "content_base64"


def _bomb(expanded: int) -> bytes:
    """The template with the first header of its first sheet swollen to a string of `expanded`
    bytes: a few hundred KB on the wire (issue 27: 410 KB became a 400 MB string in the parser)."""
    import zipfile
    source = zipfile.ZipFile(io.BytesIO(template_workbook()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "xl/worksheets/sheet1.xml":
                assert "<t>类型</t>".encode() in data
                data = data.replace("<t>类型</t>".encode(), b"<t>" + b"A" * expanded + b"</t>", 1)
            target.writestr(item, data)
    return out.getvalue()


def test_a_zip_bomb_is_refused_from_the_zip_directory_before_anything_is_parsed():
    import time
    content = _bomb(60 * 1024 * 1024)
    assert len(content) < 1_000_000
    started = time.perf_counter()
    with pytest.raises(ImportRejected) as rejected:
        parse_workbook(content, NOW)
    assert time.perf_counter() - started < 1
    [issue] = rejected.value.issues
    assert issue.field == "file:content_base64" and issue.reason.startswith("文件解压后过大")


def test_cells_beyond_the_columns_of_a_sheet_are_not_read():
    from services.inspection import imports
    assert imports.MAX_COLUMNS >= max(len(columns) for columns in COLUMNS.values())
    wide = [header(SUBJECTS) + [None] * 200 + ["far away"]]
    wide.append(["下级单位", "411502008001", "周家山社区"] + [None] * 200 + ["x" * 100])
    plan = parse_workbook(workbook({SUBJECTS: wide}), NOW)
    assert [s.name for s in plan.subjects] == ["周家山社区"]
