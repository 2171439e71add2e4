"""The ledger (工作台账): lists, history, and its CSV and Excel exports."""
from __future__ import annotations

import csv
import io
import re
from datetime import datetime

from sqlalchemy.orm import Session

from services.contracts.periods import CST
from services.contracts.vocab import (INSPECTION_KIND_LABELS, PLACE_TYPE_LABELS, SEVERITY_LABELS, InspectionKind,
                                     Severity)
from services.tasks import domain
from services.tasks.schemas import HistoryOut, LedgerQuery, TaskOut
from services.tasks.operations.common import _redacted, get_visible_task
from services.tasks.operations.figures import figures_for_tasks
from services.tasks.operations.views import _ledger_stmt, history_out, task_out


# --- ledger views and exports ---------------------------------------------------------------


def list_tasks(session: Session, query: LedgerQuery, now: datetime, principal=None) -> list[TaskOut]:
    """The ledger as the caller may see it: its subtrees, minus what an embargo hides."""
    rows = session.execute(_ledger_stmt(query, now, principal).limit(query.limit).offset(query.offset)).scalars()
    return [task_out(t, now, principal=principal) for t in rows]


def task_history(session: Session, task_id: str, principal=None) -> list[HistoryOut]:
    task = get_visible_task(session, task_id, principal)
    redact = _redacted(task, principal)
    return [history_out(h, task, redact) for h in task.history]


# Every column the history import (inspection service, `/imports`) reads is here under the
# same header, so a ledger exported by one stack imports into another unchanged: the
# inspection's key, kind, checklist, inspectors and the subject's division code rebuild
# the inspection; 问题数 and 扣分 the finding; the close-out columns its 销号.
LEDGER_COLUMNS = [
    ("序号", None), ("任务编号", "task_id"), ("责任主体", "responsible"), ("检查对象", "subject_name"),
    ("点位", "place"), ("点位类型", "place_type"), ("检查编号", "inspection_id"), ("检查类型", "inspection_kind"),
    ("检查表", "checklist_code"), ("检查人员", "inspectors"), ("检查对象区划", "subject_node"),
    ("问题类别", "category_name"), ("检查项目", "item_code"), ("问题描述", "item_text"),
    ("检查记录", "note"), ("严重程度", "severity"), ("问题数", "findings"), ("扣分", "deduction"),
    ("发现时间", "found_at"), ("整改期限", "deadline_at"), ("状态", "status"), ("亮灯", "light"),
    ("整改措施", "fix_note"), ("整改人", "fixed_by"), ("提交整改时间", "fix_submitted_at"), ("核实人", "verified_by"),
    ("销号时间", "closed_at"), ("是否按期", "on_time"), ("整改用时(小时)", "hours_to_fix"),
    ("督办次数", "urge_count"), ("上报协调至", "escalated_to"), ("反弹(关联任务)", "relapse_of"),
]


def _local(value: datetime | None) -> str:
    return value.astimezone(CST).strftime("%Y-%m-%d %H:%M") if value else ""


EXPORT_LIMIT = 10000


def ledger_rows(session: Session, query: LedgerQuery, now: datetime, principal=None) -> list[list]:
    """The ledger (工作台账) as rows under LEDGER_COLUMNS' Chinese headers, times in CST.

    An export lists the whole ledger (up to EXPORT_LIMIT rows) unless a limit is asked for."""
    if "limit" not in query.model_fields_set:
        query = query.model_copy(update={"limit": EXPORT_LIMIT})
    rows = []
    for index, t in enumerate(list_tasks(session, query, now, principal), start=1):
        light = domain.LIGHT_LABELS[t.light] if t.light else ""
        rows.append([
            index, t.task_id, t.responsible.name, t.subject_name, t.place.name if t.place else "",
            PLACE_TYPE_LABELS[t.place.place_type] if t.place else "", t.inspection_id,
            INSPECTION_KIND_LABELS.get(InspectionKind(t.inspection_kind), t.inspection_kind), t.checklist_code,
            "、".join(t.inspectors), t.subject_node,
            t.category_name, t.item_code, t.item_text, t.note or "", SEVERITY_LABELS[Severity(t.severity)],
            t.findings, t.deduction, _local(t.found_at), _local(t.deadline_at), domain.STATUS_LABELS[t.status], light,
            t.fix_note or "", t.fixed_by or "", _local(t.fix_submitted_at), t.verified_by or "",
            _local(t.closed_at), "" if t.on_time is None else ("是" if t.on_time else "否"),
            "" if t.hours_to_fix is None else t.hours_to_fix, t.urge_count, t.escalated_to or "",
            t.relapse_of or ""])
    return rows


# Characters a spreadsheet cannot hold (openpyxl refuses C0 controls other than tab, LF and
# CR; lone surrogates cannot be encoded): stored text may predate today's input checks
# (an older stack's event), so they are replaced here rather than failing the export.
_UNSAFE_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# A cell starting with one of these is a formula to Excel, LibreOffice and WPS (formula
# injection, e.g. `=cmd|' /C calc'!A0`).
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


XLSX_CELL_LIMIT = 32767


def safe_text(value: str) -> str:
    """Text a spreadsheet can hold: unholdable characters become U+FFFD."""
    return _UNSAFE_TEXT.sub("\ufffd", value)


def csv_cell(value):
    """A CSV cell shown as text: a formula-leading value gets a leading apostrophe (the usual
    defence: spreadsheet programs show the rest as typed)."""
    if not isinstance(value, str):
        return value
    value = safe_text(value)
    return "'" + value if value.startswith(FORMULA_LEADS) else value


def export_csv(session: Session, query: LedgerQuery, now: datetime, principal=None) -> bytes:
    """UTF-8 with a BOM, so Excel opens the Chinese headers correctly."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([name for name, _ in LEDGER_COLUMNS])
    writer.writerows([csv_cell(v) for v in row] for row in ledger_rows(session, query, now, principal))
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


def _append_as_text(sheet, values: list) -> None:
    """Append a row whose strings are stored as text cells, never formulas: the .xlsx keeps
    the exact text (a string-typed cell shown as typed, quote-prefixed like a typed '=)."""
    # A cell holds at most 32,767 characters in Excel; a longer stored note is cut, not fatal.
    sheet.append([safe_text(v)[:XLSX_CELL_LIMIT] if isinstance(v, str) else v for v in values])
    for cell in sheet[sheet.max_row]:
        if isinstance(cell.value, str) and cell.data_type != "s":
            cell.data_type = "s"
        if isinstance(cell.value, str) and cell.value.startswith(FORMULA_LEADS):
            cell.quotePrefix = True


def export_xlsx(session: Session, query: LedgerQuery, now: datetime, principal=None) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill

    rows = ledger_rows(session, query, now, principal)
    book = Workbook()
    sheet = book.active
    sheet.title = "整改台账"
    sheet.append([name for name, _ in LEDGER_COLUMNS])
    for cell in sheet[1]:
        cell.font = Font(bold=True)
        cell.alignment = Alignment(horizontal="center")
    fills = {"红灯": "FFC7CE", "黄灯": "FFEB9C", "绿灯": "C6EFCE"}
    light_col = [name for name, _ in LEDGER_COLUMNS].index("亮灯") + 1
    for row in rows:
        _append_as_text(sheet, row)
        light = row[light_col - 1]
        if light in fills:
            sheet.cell(row=sheet.max_row, column=light_col).fill = PatternFill("solid", fgColor=fills[light])
    widths = {"任务编号": 38, "问题描述": 40, "检查记录": 30, "整改措施": 30, "责任主体": 18, "点位": 18,
              "发现时间": 17, "整改期限": 17, "提交整改时间": 17, "销号时间": 17, "反弹(关联任务)": 38}
    for col, (name, _) in enumerate(LEDGER_COLUMNS, start=1):
        sheet.column_dimensions[sheet.cell(row=1, column=col).column_letter].width = widths.get(name, 12)
    sheet.freeze_panes = "A2"
    summary = book.create_sheet("汇总")
    summary.append(["责任主体", "任务数", "已销号", "按期销号", "逾期未销号", "反弹", "销号率", "按期率", "平均整改用时(小时)"])
    for cell in summary[1]:
        cell.font = Font(bold=True)
    for out in figures_for_tasks(session, _ledger_stmt(query, now, principal), now, query.period or ""):
        _append_as_text(summary, [out.name, out.opened, out.closed, out.closed_on_time, out.overdue_open, out.relapses,
                        out.close_rate, out.on_time_rate, out.mean_hours_to_fix])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()
