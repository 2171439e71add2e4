"""History import (历史导入): an office's months of records kept in Excel, loaded once.

The template (`template_workbook`) has four sheets — subjects (考评对象), places (检查点位),
inspections (检查记录) and the ledger of findings with their close-outs (整改台账) — with
Chinese headers, an example row each and a notes sheet. `parse_workbook` reads an upload
into plain rows and checks everything a row can say about itself (required cells, labels,
dates, counts, a close-out after its finding); the use case (`operations.import_history`)
checks the rest against the registry and the checklists. Every problem is reported by
sheet, row and column, and nothing is stored while any remains.

Columns are found by their header, so extra columns are ignored: a ledger exported by a
stack (`GET /ledger/export.xlsx`, sheet 整改台账) imports unchanged — its rows carry the
inspection's key, kind, subject, place, checklist, inspectors and time, so an inspection
with findings needs no 检查记录 row. Times without a zone are China Standard Time.
Pure: no database, no nameko.
"""
from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

from services.contracts.errors import RuleViolation
from services.contracts.nodes import InvalidNodeCode, normalize_code
from services.contracts.periods import CST
from services.contracts.vocab import INSPECTION_KIND_LABELS, PLACE_TYPE_LABELS, SUBJECT_TYPE_LABELS

SUBJECTS, PLACES, INSPECTIONS, LEDGER = "考评对象", "检查点位", "检查记录", "整改台账"
MAX_ISSUES = 200
MAX_ROWS = 20000
# A workbook is a zip: 410 KB of it once expanded to a 400 MB string in the parser (issue 27).
# The sizes its directory declares bind the reader (zipfile stops at them), so they are
# checked before anything is parsed. The template's columns fit many times in MAX_COLUMNS;
# cells beyond it are not read at all.
MAX_UNCOMPRESSED = 40 * 1024 * 1024
MAX_MEMBER = 25 * 1024 * 1024
MAX_MEMBERS = 500
MAX_COLUMNS = 64


@dataclass(frozen=True)
class Column:
    header: str
    required: bool
    note: str
    example: Any = None


COLUMNS: dict[str, list[Column]] = {
    SUBJECTS: [
        Column("类型", True, "下级单位 / 机关部门 / 辖区单位", "下级单位"),
        Column("区划代码", True, "12位统计用区划代码；下级单位填本单位代码，其他填所属单位代码", "411502008001"),
        Column("名称", True, "考评对象名称", "周家山社区"),
    ],
    PLACES: [
        Column("点位类型", True, "公厕、垃圾站房、农贸市场等", "公厕"),
        Column("名称", True, "点位名称（同一区划内不重复）", "周家山路公厕"),
        Column("区划代码", True, "点位所在区划代码", "411502008001"),
        Column("地址", False, "", "周家山路12号"),
        Column("责任主体", False, "责任单位名称（属地/门前三包），须为考评对象", "周家山社区"),
    ],
    INSPECTIONS: [
        Column("检查编号", True, "原始记录编号，导入后不变；重复上传同一编号不会重复导入", "2026-03-W1-ZJS"),
        Column("检查类型", True, "日常检查、明查、暗访、专项整治、复查、自查等", "日常检查"),
        Column("检查对象", True, "考评对象名称", "周家山社区"),
        Column("检查对象区划", True, "考评对象的区划代码", "411502008001"),
        Column("点位", False, "点位名称（可空）", "周家山路公厕"),
        Column("检查表版本", False, "默认为当前版本", None),
        Column("检查表", True, "检查表代码，如 public-toilet", "public-toilet"),
        Column("检查人员", True, "多人用顿号分隔", "王芳、李强"),
        Column("检查时间", True, "年-月-日 时:分（北京时间）", "2026-03-02 09:30"),
        Column("备注", False, "", None),
    ],
    LEDGER: [
        Column("检查编号", True, "对应检查记录的检查编号", "2026-03-W1-ZJS"),
        Column("检查项目", True, "检查表中的项目代码", "PT-02"),
        Column("问题数", True, "发现问题数（≥1）", 2),
        Column("扣分", False, "默认按检查表计算", None),
        Column("检查记录", False, "问题说明", "便池积粪"),
        Column("整改期限", False, "默认按检查项目的整改时限", "2026-03-03 09:30"),
        Column("整改措施", False, "", "已冲洗消毒"),
        Column("整改人", False, "", "张三"),
        Column("提交整改时间", False, "默认为销号时间", "2026-03-02 16:00"),
        Column("核实人", False, "已销号时必填", "王芳"),
        Column("销号时间", False, "已销号的填写；空表示仍未整改", "2026-03-02 17:00"),
        # An inspection not listed on 检查记录 (e.g. a ledger exported by another stack):
        Column("检查类型", False, "检查记录表未列出该检查时填写（导出的台账自带）", None),
        Column("检查对象", False, "同上", None),
        Column("检查对象区划", False, "同上", None),
        Column("点位", False, "同上", None),
        Column("点位类型", False, "同上", None),
        Column("检查表", False, "同上", None),
        Column("检查表版本", False, "同上", None),
        Column("检查人员", False, "同上", None),
        Column("发现时间", False, "同上：检查时间", None),
    ],
}


@dataclass(frozen=True)
class Issue:
    sheet: str
    row: int
    column: str
    reason: str

    @property
    def field(self) -> str:
        return f"{self.sheet}!{self.row}:{self.column}" if self.row else f"{self.sheet}:{self.column}"

    def as_error(self) -> dict:
        return {"field": self.field, "reason": self.reason}


class ImportRejected(RuleViolation):
    """The upload has problems; each names its sheet, row and column. Nothing was stored."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues[:MAX_ISSUES]
        first = self.issues[0]
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        super().__init__(first.field, f"{first.reason}{more}")


@dataclass
class SubjectRow:
    row: int
    subject_type: str
    node: str
    name: str


@dataclass
class PlaceRow:
    row: int
    place_type: str
    name: str
    node: str
    address: str | None
    responsible: str | None


@dataclass
class FindingRow:
    row: int
    item_code: str
    findings: int
    deduction: float | None
    note: str | None
    deadline_at: datetime | None
    fix_note: str | None
    fixed_by: str | None
    fix_submitted_at: datetime | None
    verified_by: str | None
    closed_at: datetime | None


@dataclass
class InspectionRow:
    sheet: str
    row: int
    key: str
    kind: str
    subject_name: str
    subject_node: str
    place_name: str | None
    place_type: str | None
    version: str | None
    checklist_code: str
    inspectors: list[str]
    inspected_at: datetime
    note: str | None
    findings: list[FindingRow] = field(default_factory=list)


@dataclass
class ImportPlan:
    subjects: list[SubjectRow]
    places: list[PlaceRow]
    inspections: list[InspectionRow]


# --- the template ---------------------------------------------------------------------


def template_workbook() -> bytes:
    from openpyxl import Workbook
    from openpyxl.comments import Comment
    from openpyxl.styles import Font

    book = Workbook()
    book.remove(book.active)
    for sheet_name, columns in COLUMNS.items():
        sheet = book.create_sheet(sheet_name)
        sheet.append([c.header for c in columns])
        sheet.append([c.example for c in columns])
        for cell, column in zip(sheet[1], columns):
            cell.font = Font(bold=True, color="B00000" if column.required else "000000")
            if column.note:
                cell.comment = Comment(column.note, "创卫")
            sheet.column_dimensions[cell.column_letter].width = max(12, 2 * len(column.header) + 4)
        sheet.freeze_panes = "A2"
    notes = book.create_sheet("说明")
    for line in (
            "历史数据导入模板：红色表头为必填列。第2行为示例，导入前请删除或改写。",
            "时间按北京时间填写：2026-03-02 09:30 或 2026-03-02。",
            "同一检查编号重复上传不会重复导入；任何一行有错时整份文件都不导入，并列出出错的表、行、列。",
            "已销号的问题填写销号时间和核实人：历史问题按当时的日期计入，不会产生逾期、督办或一票否决。",
            "未填写销号时间的问题作为当前待整改任务导入，整改期限已过的自导入之日起重新计时。",
            "从本系统导出的整改台账（整改台账表）可直接导入另一套系统。",
            f"检查类型：{'、'.join(INSPECTION_KIND_LABELS.values())}",
            f"点位类型：{'、'.join(PLACE_TYPE_LABELS.values())}",
            f"考评对象类型：{'、'.join(SUBJECT_TYPE_LABELS.values())}"):
        notes.append([line])
    notes.column_dimensions["A"].width = 100
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


# --- reading an upload --------------------------------------------------------------------


_SEPARATORS = re.compile(r"[、,，;；/\s]+")
_ONE_LINE = re.compile(r"^[^\r\n\t\u2028\u2029\x00-\x1f\x7f]*$")
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%Y-%m-%d", "%Y/%m/%d",
                 "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S")


def _by_label(labels: dict) -> dict[str, str]:
    out = {}
    for key, label in labels.items():
        out[label] = key.value
        out[key.value] = key.value
    return out


KIND_BY_LABEL = _by_label(INSPECTION_KIND_LABELS)
PLACE_TYPE_BY_LABEL = _by_label(PLACE_TYPE_LABELS)
SUBJECT_TYPE_BY_LABEL = _by_label(SUBJECT_TYPE_LABELS)


class _Row:
    """One sheet row's cells by header, collecting problems instead of stopping at the first."""

    def __init__(self, sheet: str, row: int, values: dict[str, Any], issues: list[Issue]):
        self.sheet, self.row, self.values, self.issues = sheet, row, values, issues

    def problem(self, column: str, reason: str) -> None:
        self.issues.append(Issue(self.sheet, self.row, column, reason))

    def raw(self, column: str) -> Any:
        value = self.values.get(column)
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    def text(self, column: str, required: bool = False, max_length: int = 200, one_line: bool = True) -> str | None:
        value = self.raw(column)
        if value is None:
            if required:
                self.problem(column, "必填 (required)")
            return None
        value = str(value).strip() if not isinstance(value, float) or not value.is_integer() else str(int(value))
        if len(value) > max_length:
            self.problem(column, f"不能超过{max_length}个字符 (at most {max_length} characters)")
            return None
        if one_line and not _ONE_LINE.match(value):
            self.problem(column, "不能包含换行符或控制字符 (one line, no control characters)")
            return None
        return value

    def label(self, column: str, table: dict[str, str], required: bool = True) -> str | None:
        value = self.text(column, required)
        if value is None:
            return None
        if value not in table:
            choices = "、".join(k for k in table if not re.match(r"^[a-z_]+$", k))
            self.problem(column, f"未知的取值“{value}”，可选：{choices} (unknown value)")
            return None
        return table[value]

    def node(self, column: str, required: bool = True) -> str | None:
        value = self.text(column, required, 12)
        if value is None:
            return None
        try:
            return normalize_code(value)
        except (InvalidNodeCode, ValueError):
            self.problem(column, f"“{value}”不是有效的12位区划代码 (not a division code)")
            return None

    def integer(self, column: str, required: bool = True, low: int = 0, high: int = 1000) -> int | None:
        value = self.raw(column)
        if value is None:
            if required:
                self.problem(column, "必填 (required)")
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.problem(column, f"“{value}”不是整数 (not a whole number)")
            return None
        if not number.is_integer() or not low <= number <= high:
            self.problem(column, f"应为{low}到{high}之间的整数 (a whole number from {low} to {high})")
            return None
        return int(number)

    def number(self, column: str, low: float = 0, high: float = 1000) -> float | None:
        value = self.raw(column)
        if value is None:
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.problem(column, f"“{value}”不是数字 (not a number)")
            return None
        if number != number or not low <= number <= high:
            self.problem(column, f"应在{low}到{high}之间 (between {low} and {high})")
            return None
        return number

    def moment(self, column: str, required: bool = False) -> datetime | None:
        value = self.raw(column)
        if value is None:
            if required:
                self.problem(column, "必填 (required)")
            return None
        moment = None
        if isinstance(value, datetime):
            moment = value
        elif isinstance(value, date):
            moment = datetime.combine(value, time(0))
        else:
            for fmt in _TIME_FORMATS:
                try:
                    moment = datetime.strptime(str(value), fmt)
                    break
                except ValueError:
                    continue
        if moment is None:
            self.problem(column, f"“{value}”不是时间，应为 2026-03-02 09:30 (not a time)")
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=CST)
        if not 2000 <= moment.astimezone(CST).year <= 2099:
            self.problem(column, "年份应在2000到2099之间 (year 2000–2099)")
            return None
        return moment


def _rows(book, sheet_name: str, issues: list[Issue]) -> list[_Row]:
    if sheet_name not in book.sheetnames:
        return []
    sheet = book[sheet_name]
    rows = sheet.iter_rows(values_only=True, max_col=MAX_COLUMNS)
    header = next(rows, None)
    if header is None:
        return []
    names = [str(h).strip() if h is not None else "" for h in header]
    known = {c.header for c in COLUMNS[sheet_name]}
    for column in COLUMNS[sheet_name]:
        if column.required and column.header not in names:
            issues.append(Issue(sheet_name, 1, column.header, "缺少必填列 (required column missing)"))
    out = []
    for number, values in enumerate(rows, start=2):
        if number > MAX_ROWS:
            issues.append(Issue(sheet_name, number, "", f"一次最多导入{MAX_ROWS}行 (at most {MAX_ROWS} rows)"))
            break
        if all(v is None or (isinstance(v, str) and not v.strip()) for v in values):
            continue  # a blank line
        cells = {name: value for name, value in zip(names, values) if name in known}
        out.append(_Row(sheet_name, number, cells, issues))
    return out


def _split(names: str | None) -> list[str]:
    return [n for n in _SEPARATORS.split(names or "") if n]


def _file_problem(reason: str) -> ImportRejected:
    return ImportRejected([Issue("file", 0, "content_base64", reason)])


def check_archive(content: bytes) -> None:
    """Refuse, from the zip's directory alone, a workbook that would expand beyond the bounds
    (a zip bomb): nothing is decompressed here."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise _file_problem("不是有效的 .xlsx 文件 (not an .xlsx workbook)") from None
    if len(members) > MAX_MEMBERS:
        raise _file_problem(f"文件内部条目过多：{len(members)}个，上限{MAX_MEMBERS}个 "
                            f"(the workbook holds {len(members)} parts; at most {MAX_MEMBERS})")
    total = 0
    for member in members:
        if member.file_size > MAX_MEMBER:
            raise _file_problem(f"文件解压后过大：{member.filename} 为{member.file_size}字节，单个部分上限{MAX_MEMBER}字节 "
                                f"(a part of the workbook expands beyond the limit)")
        total += member.file_size
    if total > MAX_UNCOMPRESSED:
        raise _file_problem(f"文件解压后过大：共{total}字节，上限{MAX_UNCOMPRESSED}字节，请拆分后分批导入 "
                            f"(the workbook expands to {total} bytes; at most {MAX_UNCOMPRESSED})")


def parse_workbook(content: bytes, now: datetime) -> ImportPlan:
    """Read an upload; raise `ImportRejected` listing every problem a row shows by itself.
    Bounded (`check_archive`, MAX_ROWS, MAX_COLUMNS, openpyxl's read-only mode) but costly:
    the service runs it in a worker process (`services.plumbing.offload`)."""
    from openpyxl import load_workbook

    check_archive(content)
    issues: list[Issue] = []
    try:
        book = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    except Exception:  # not a workbook at all: zip, XML and openpyxl's own errors alike
        raise ImportRejected([Issue("file", 0, "content_base64", "不是有效的 .xlsx 文件 (not an .xlsx workbook)")])
    if not {SUBJECTS, PLACES, INSPECTIONS, LEDGER} & set(book.sheetnames):
        raise ImportRejected([Issue("file", 0, "sheets", f"没有可导入的表：{SUBJECTS}、{PLACES}、{INSPECTIONS}、{LEDGER}"
                                                         " (no sheet of the template)")])

    def past(row: _Row, column: str, moment: datetime | None) -> datetime | None:
        if moment is not None and moment > now:
            row.problem(column, "历史记录的时间不能晚于现在 (history lies in the past)")
            return None
        return moment

    subjects = []
    for r in _rows(book, SUBJECTS, issues):
        subject_type, node, name = r.label("类型", SUBJECT_TYPE_BY_LABEL), r.node("区划代码"), r.text("名称", True)
        if None not in (subject_type, node, name):
            subjects.append(SubjectRow(r.row, subject_type, node, name))
    places = []
    for r in _rows(book, PLACES, issues):
        place_type, name, node = r.label("点位类型", PLACE_TYPE_BY_LABEL), r.text("名称", True), r.node("区划代码")
        address, responsible = r.text("地址", max_length=500), r.text("责任主体")
        if None not in (place_type, name, node):
            places.append(PlaceRow(r.row, place_type, name, node, address, responsible))

    inspections: dict[str, InspectionRow] = {}

    def inspection_from(r: _Row, time_column: str) -> InspectionRow | None:
        key = r.text("检查编号", True, 100)
        kind = r.label("检查类型", KIND_BY_LABEL)
        subject_name, subject_node = r.text("检查对象", True), r.node("检查对象区划")
        place_name = r.text("点位")
        place_type = r.label("点位类型", PLACE_TYPE_BY_LABEL, required=False) if r.raw("点位类型") else None
        version, code = r.text("检查表版本", max_length=32), r.text("检查表", True, 64)
        inspectors = _split(r.text("检查人员", True, 2000))
        if r.raw("检查人员") is not None and not inspectors:
            r.problem("检查人员", "必填 (required)")
        if any(len(n) > 100 for n in inspectors):
            r.problem("检查人员", "每人不超过100个字符 (at most 100 characters a name)")
        inspected_at = past(r, time_column, r.moment(time_column, True))
        note = r.text("备注", max_length=4000, one_line=False) if r.sheet == INSPECTIONS else None
        if None in (key, kind, subject_name, subject_node, code, inspected_at) or not inspectors:
            return None
        return InspectionRow(r.sheet, r.row, key, kind, subject_name, subject_node, place_name, place_type, version,
                             code, inspectors, inspected_at, note)

    for r in _rows(book, INSPECTIONS, issues):
        inspection = inspection_from(r, "检查时间")
        if inspection is None:
            continue
        if inspection.key in inspections:
            r.problem("检查编号", f"与第{inspections[inspection.key].row}行重复 (duplicate key)")
            continue
        inspections[inspection.key] = inspection

    seen_items: dict[tuple[str, str], int] = {}
    for r in _rows(book, LEDGER, issues):
        key = r.text("检查编号", True, 100)
        item_code, findings = r.text("检查项目", True, 32), r.integer("问题数", low=1)
        deduction = r.number("扣分")
        note = r.text("检查记录", max_length=2000, one_line=False)
        deadline_at = r.moment("整改期限")
        fix_note = r.text("整改措施", max_length=2000, one_line=False)
        fixed_by, verified_by = r.text("整改人", max_length=100), r.text("核实人", max_length=100)
        fix_submitted_at = past(r, "提交整改时间", r.moment("提交整改时间"))
        closed_at = past(r, "销号时间", r.moment("销号时间"))
        if key is None:
            continue
        inspection = inspections.get(key)
        if inspection is None:
            # An exported ledger: the row itself says which inspection it comes from.
            if all(r.raw(c) is None for c in ("检查类型", "检查对象", "检查对象区划", "检查表", "发现时间")):
                r.problem("检查编号", f"检查记录表中没有检查编号“{key}”，本行也未填写检查信息 (unknown inspection)")
                continue
            inspection = inspection_from(r, "发现时间")
            if inspection is None:
                continue
            inspections[key] = inspection
        if item_code is not None:
            if (key, item_code) in seen_items:
                r.problem("检查项目", f"同一检查的该项目已在第{seen_items[(key, item_code)]}行 (item listed twice)")
                continue
            seen_items[(key, item_code)] = r.row
        if closed_at is not None:
            if verified_by is None:
                r.problem("核实人", "已销号的问题须填写核实人 (who verified the close-out)")
            if closed_at <= inspection.inspected_at:
                r.problem("销号时间", "销号时间应晚于检查时间 (closed after it was found)")
            if fix_submitted_at is not None and fix_submitted_at > closed_at:
                r.problem("提交整改时间", "提交整改时间不能晚于销号时间 (fixed before it was closed)")
        elif verified_by is not None or fix_submitted_at is not None:
            r.problem("销号时间", "填写了核实人或提交整改时间，但没有销号时间 (close-out without its time)")
        if fix_submitted_at is not None and fix_submitted_at <= inspection.inspected_at:
            r.problem("提交整改时间", "提交整改时间应晚于检查时间 (fixed after it was found)")
        if deadline_at is not None and deadline_at <= inspection.inspected_at:
            r.problem("整改期限", "整改期限应晚于检查时间 (the deadline follows the finding)")
        if item_code is None or findings is None:
            continue
        inspection.findings.append(FindingRow(r.row, item_code, findings, deduction, note, deadline_at, fix_note,
                                              fixed_by, fix_submitted_at, verified_by, closed_at))
    if issues:
        raise ImportRejected(issues)
    return ImportPlan(subjects, places, list(inspections.values()))

