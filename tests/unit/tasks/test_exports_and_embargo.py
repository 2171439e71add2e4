"""Ledger exports against hostile stored text, and the 暗访 embargo, with the service's
dependencies replaced (in-memory SQLite, a recording outbox, a fixed clock)."""
import csv
import io
from datetime import timedelta
from unittest.mock import MagicMock

import pytest
from openpyxl import load_workbook

from services.contracts.events import Producer, make_event
from services.contracts.events.inspection import InspectionReleased, InspectionSubmitted
from services.plumbing.auth import Grant, Principal
from services.tasks import operations as ops
from services.tasks.schemas import LedgerQuery
from tests.unit.tasks.test_service_unit import NOW, sample_event, service, engine  # noqa: F401 (fixtures)

STREET, COMMUNITY = "411502008000", "411502008001"


def person(name, *grants):
    return Principal(subject=f"user-{name}", name=name, grants=tuple(Grant(r, n) for r, n in grants))


CONTACT = person("张伟", ("rectifier", COMMUNITY))
INSPECTOR = person("王芳", ("inspector", STREET))


@pytest.mark.parametrize("text,shown", [
    ("=1+1", "'=1+1"), ("+SUM(A1)", "'+SUM(A1)"), ("-2", "'-2"), ("@A1", "'@A1"), ("\tx", "'\tx"),
    ("\r=x", "'\r=x"), ("整改 = 完成", "整改 = 完成"), ("a\x01b", "a\ufffdb"), ("\x01=x", "\ufffd=x"), ("", ""),
])
def test_csv_cells_are_shown_as_text(text, shown):
    assert ops.csv_cell(text) == shown


def test_numbers_stay_numbers():
    assert ops.csv_cell(-2.5) == -2.5 and ops.csv_cell(None) is None


def unannounced(note="暗访员记录", **changes):
    body = sample_event()
    body["payload"].update(kind="unannounced", **changes)
    for finding in body["payload"]["findings"]:
        finding["note"] = note
    return body


def release_of(body):
    inspection = InspectionSubmitted.model_validate(body["payload"])
    released = InspectionReleased(inspection_id=inspection.inspection_id, inspecting_node=inspection.inspecting_node,
                                  subject=inspection.subject, released_at=NOW + timedelta(hours=1))
    return make_event(released, Producer(node=STREET, service="inspection")).to_message()


def test_an_embargoed_inspection_is_announced_on_release_only(service):
    body = unannounced()
    ids = service.on_inspection_submitted(body)
    assert ids and service.outbox.of("task_opened") == [] and service.outbox.of("ledger_figures_updated") == []
    request = MagicMock()
    assert service.list_tasks(request, query=LedgerQuery(), principal=CONTACT) == []
    assert len(service.list_tasks(request, query=LedgerQuery(), principal=INSPECTOR)) == len(ids)
    assert service.run_sweep(request, principal=person("李明", ("administrator", STREET))).examined == 0

    deadlines = {t.task_id: t.deadline_at for t in service.list_tasks(request, query=LedgerQuery(),
                                                                         principal=INSPECTOR)}
    found_at = service.list_tasks(request, query=LedgerQuery(), principal=INSPECTOR)[0].found_at
    assert sorted(service.on_inspection_released(release_of(body))) == sorted(ids)
    # The time limit runs from the release (NOW + 1 h), when the subject learns of it.
    for t in service.list_tasks(request, query=LedgerQuery(), principal=INSPECTOR):
        assert t.deadline_at == deadlines[t.task_id] + (NOW + timedelta(hours=1) - found_at)
    opened = service.outbox.of("task_opened")
    assert sorted(e.task.task_id for e in opened) == sorted(ids) and all(e.note is None for e in opened)
    [figures] = service.outbox.of("ledger_figures_updated")
    assert figures.opened == len(ids)
    seen = service.list_tasks(request, query=LedgerQuery(), principal=CONTACT)
    assert len(seen) == len(ids) and all(t.inspectors == [] and t.note is None for t in seen)
    assert service.on_inspection_released(release_of(body)) == []     # another copy: nothing more


def test_a_release_of_another_office_is_not_this_ledgers():
    from services.contracts.nodes import Tier
    from tests.unit.tasks.test_service_unit import stack
    district = stack("411502000000", Tier.district)
    body = unannounced(inspecting_node="411502008000")
    assert district.on_inspection_released(release_of(body)) == []


def test_exports_hold_hostile_stored_text(service, engine):
    body = sample_event()
    body["payload"]["subject"]["name"] = "=cmd|' /C calc'!A0"
    for finding in body["payload"]["findings"]:
        finding["note"] = "@x\x01\x1f" + "长" * 40000
    service.on_inspection_submitted(body)
    request = MagicMock()
    data = service.export_xlsx(request, query=LedgerQuery(), principal=INSPECTOR).get_data()
    sheet = load_workbook(io.BytesIO(data))["整改台账"]
    header = [c.value for c in sheet[1]]
    row = dict(zip(header, sheet[2]))
    assert row["检查对象"].value == "=cmd|' /C calc'!A0" and row["检查对象"].data_type == "s"
    assert row["检查记录"].value.startswith("@x\ufffd\ufffd长") and len(row["检查记录"].value) == ops.XLSX_CELL_LIMIT
    text = service.export_csv(request, query=LedgerQuery(), principal=INSPECTOR).get_data().decode("utf-8-sig")
    line = dict(zip(*list(csv.reader(io.StringIO(text)))[:2]))
    assert line["检查对象"] == "'=cmd|' /C calc'!A0" and line["检查记录"].startswith("'@x\ufffd\ufffd")


def test_a_nul_from_an_older_stack_does_not_dead_letter_the_inspection(service, engine):
    body = sample_event()
    body["payload"]["subject"]["name"] = "周家山\x00社区"
    body["payload"]["findings"][0]["note"] = "\x00"
    ids = service.on_inspection_submitted(body)
    assert len(ids) == len(body["payload"]["findings"])
    [row] = [t for t in service.list_tasks(MagicMock(), query=LedgerQuery(), principal=INSPECTOR)
             if t.note == "\ufffd"]
    assert row.subject_name == "周家山\ufffd社区"
    nested = {"a": [{"b\x00": ["\x00"]}], "n": 1}
    assert ops.scrub_nul(nested) == {"a": [{"b\ufffd": ["\ufffd"]}], "n": 1}
