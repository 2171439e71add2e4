"""History import (历史导入, issue 15): half a year of an office's records from Excel give the
same figures as the same half year lived through the stack, with no veto and no notice for
the past; a bad file stores nothing and names every problem; a second upload adds nothing.

One street stack (inspection, tasks, scoring, notify). 周家山社区's half year is imported;
华森社区 lives the very same half year through the API, the controllable clock set to each
visit, fix and close-out in turn. Their monthly scores and ledger figures must agree.
"""
from __future__ import annotations

import base64
import io
from datetime import datetime, timedelta, timezone

import pytest
from openpyxl import Workbook, load_workbook

from services.contracts.periods import CST, Period, PeriodKind
from services.inspection.imports import COLUMNS, INSPECTIONS, LEDGER, PLACES, SUBJECTS
from services.inspection.service import InspectionService
from services.notify.service import NotifyService
from services.plumbing import clock
from services.scoring.service import ScoringService
from services.tasks.service import TasksService
from tests import support

STREET, IMPORTED, LIVE = "411502008000", "411502008001", "411502008002"
NAMES = {IMPORTED: "周家山社区", LIVE: "华森社区"}


def _half_year() -> list[str]:
    """The six months ending two months ago: all of them history whenever the test runs."""
    period = Period.containing(PeriodKind.month, datetime.now(CST)).previous()
    months = []
    for _ in range(6):
        period = period.previous()
        months.append(period.key)
    return sorted(months)


MONTHS = _half_year()
PHOTO = {"uri": "photos/after.jpg", "sha256": "b" * 64}


def visits() -> list[dict]:
    """Two public-toilet checks a month; each finds two problems fixed well in time, and the
    first of the month also a third, fixed a day late (on-time rate below 100 %)."""
    out = []
    for month in MONTHS:
        year, mon = map(int, month.split("-"))
        for day in (4, 18):
            at = datetime(year, mon, day, 9, 30, tzinfo=CST)
            findings = [("PT-03", 1, 5, 6), ("PT-06", 1, 5, 6)]  # item, count, fixed +h, closed +h
            if day == 4:
                findings.append(("PT-04", 2, 30, 31))           # 24 h limit: fixed 6 h late
            out.append({"key": f"{month}-{day:02d}", "at": at, "findings": findings})
    return out


def history_workbook(visit_list: list[dict], subject_node: str = IMPORTED) -> bytes:
    book = Workbook()
    book.remove(book.active)
    sheets = {name: book.create_sheet(name) for name in (SUBJECTS, PLACES, INSPECTIONS, LEDGER)}
    for name, sheet in sheets.items():
        sheet.append([c.header for c in COLUMNS[name]])
    name = NAMES[subject_node]
    sheets[SUBJECTS].append(["下级单位", subject_node, name])
    sheets[PLACES].append(["公厕", f"{name}公厕", subject_node, "某路1号", name])
    for v in visit_list:
        sheets[INSPECTIONS].append([v["key"], "日常检查", name, subject_node, f"{name}公厕", "2010.1",
                                    "public-toilet", "王芳、李强", v["at"].strftime("%Y-%m-%d %H:%M"), None])
        for item, count, fixed, closed in v["findings"]:
            sheets[LEDGER].append([v["key"], item, count, None, "检查发现", None, "已整改", "张伟",
                                   (v["at"] + timedelta(hours=fixed)).strftime("%Y-%m-%d %H:%M"), "王芳",
                                   (v["at"] + timedelta(hours=closed)).strftime("%Y-%m-%d %H:%M")])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def upload(api, content: bytes):
    return api.post("/imports", {"filename": "history.xlsx", "content_base64": base64.b64encode(content).decode()})


@pytest.fixture
def street(amqp_uri, database_url):
    ports = {name: support.free_port() for name in ("inspection", "tasks", "scoring", "notify")}
    config = support.base_config(
        amqp_uri, database_url, WEB_ADDRESSES={k: f"127.0.0.1:{p}" for k, p in ports.items()},
        TASKS_SWEEP_INTERVAL=0, NOTIFY_BULLETIN_SCHEDULE=False, NOTIFY_POLL_INTERVAL=0.5,
        MAX_BODY_BYTES=2_000_000)
    with support.running_services(config, InspectionService, TasksService, ScoringService, NotifyService):
        yield {name: support.ApiClient(f"http://127.0.0.1:{port}") for name, port in ports.items()}


def contact(notify, subject: dict) -> None:
    """A contact for the subject, so that any notice about it would be stored."""
    assert notify.post("/contacts", {"owner_kind": "subject", "owner_id": subject["subject_id"],
                                     "node": subject["node"], "name": subject["name"],
                                     "inbox_user": f"user-{subject['node']}"}).status_code == 201


def set_clock(moment: datetime) -> None:
    clock.set_offset(moment - datetime.now(timezone.utc))


def live_through(street: dict, visit_list: list[dict]) -> None:
    """华森社区's half year through the API, each step at its own time."""
    inspection, tasks = street["inspection"], street["tasks"]
    subject = inspection.post("/subjects", {"subject_type": "child_unit", "node": LIVE, "name": NAMES[LIVE]}).json()
    contact(street["notify"], subject)
    place = inspection.post("/places", {"place_type": "public_toilet", "name": f"{NAMES[LIVE]}公厕", "node": LIVE,
                                        "address": "某路1号", "responsible_subject_id": subject["subject_id"]}).json()
    rectifier = tasks.as_user("张伟", [("rectifier", LIVE)])
    inspector = tasks.as_user("王芳", [("inspector", STREET)])
    for v in visit_list:
        set_clock(v["at"] + timedelta(minutes=30))
        recorded = inspection.post("/inspections", {
            "kind": "routine", "subject_id": subject["subject_id"], "place_id": place["place_id"],
            "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳", "李强"],
            "inspected_at": v["at"].isoformat(),
            "results": [{"item_code": item, "findings": count, "note": "检查发现"}
                        for item, count, _, _ in v["findings"]]})
        assert recorded.status_code == 201, recorded.text
        inspection_id = recorded.json()["inspection_id"]
        opened = support.wait_until(lambda: (lambda found: found if len(found) == len(v["findings"]) else None)(
            [t for t in tasks.get("/tasks", params={"subject_id": subject["subject_id"], "limit": 500}).json()
             if t["inspection_id"] == inspection_id]), message=f"the tasks of {v['key']}")
        by_item = {t["item_code"]: t["task_id"] for t in opened}
        for item, _, fixed, closed in sorted(v["findings"], key=lambda f: f[2]):
            set_clock(v["at"] + timedelta(hours=fixed))
            assert rectifier.post(f"/tasks/{by_item[item]}/start", {}).status_code == 200
            done = rectifier.post(f"/tasks/{by_item[item]}/fix", {"note": "已整改", "after_photos": [PHOTO]})
            assert done.status_code == 200, done.text
            set_clock(v["at"] + timedelta(hours=closed))
            done = inspector.post(f"/tasks/{by_item[item]}/verify", {"note": "现场复查合格"})
            assert done.status_code == 200, done.text
    clock.reset()


def monthly(scoring, node: str) -> dict[str, tuple]:
    scores = scoring.get(f"/subjects/{node}/scores", params={"period_kind": "month"}).json()["scores"]
    return {s["period"]: (s["score"], s["inputs"], s["vetoed"]) for s in scores}


FIGURES = ("opened", "closed", "closed_on_time", "overdue_open", "relapses", "close_rate", "on_time_rate",
           "mean_hours_to_fix")


def ledger_figures(tasks, subject_id: str, month: str) -> tuple:
    [out] = tasks.get("/figures", params={"period": month, "subject_id": subject_id}).json() or [None]
    return tuple(out[k] for k in FIGURES) if out else None


def test_half_a_year_imported_reads_as_lived_with_no_veto_or_notice_for_the_past(street):
    inspection, tasks, scoring, notify = street["inspection"], street["tasks"], street["scoring"], street["notify"]
    plan = visits()

    # The template comes from the stack, for office administrators only.
    template = inspection.get("/imports/template.xlsx")
    assert template.status_code == 200 and template.headers["Content-Type"].startswith("application/vnd.openxml")
    assert load_workbook(io.BytesIO(template.content)).sheetnames[:4] == [SUBJECTS, PLACES, INSPECTIONS, LEDGER]
    inspector = inspection.as_user("王芳", [("inspector", STREET)])
    assert inspector.get("/imports/template.xlsx").status_code == 403
    assert upload(inspector, history_workbook(plan)).status_code == 403
    community_admin = inspection.as_user("社区管理员", [("administrator", IMPORTED)])
    assert upload(community_admin, history_workbook(plan)).status_code == 403

    # A file with problems: each named by sheet, row and column, and nothing stored.
    broken = history_workbook(plan)
    book = load_workbook(io.BytesIO(broken))
    book[LEDGER]["B3"] = "PT-99"                      # no such checklist item
    book[INSPECTIONS]["C5"] = "不存在的社区"           # no such subject
    buffer = io.BytesIO()
    book.save(buffer)
    rejected = upload(inspection, buffer.getvalue())
    assert rejected.status_code == 422, rejected.text
    fields = [e["field"] for e in rejected.json()["errors"]]
    assert fields == ["整改台账!3:检查项目", "检查记录!5:检查对象"], rejected.json()
    assert inspection.get("/subjects").json() == [] and inspection.get("/places").json() == []
    assert inspection.get("/inspections").json() == []

    # The community is registered already (the import finds it by node, type and name), with
    # a contact: any notice about it would be stored.
    registered = inspection.post("/subjects", {"subject_type": "child_unit", "node": IMPORTED,
                                               "name": NAMES[IMPORTED]})
    assert registered.status_code == 201, registered.text
    contact(notify, registered.json())

    # The import, and the same half year lived through the API.
    imported = upload(inspection, history_workbook(plan))
    assert imported.status_code == 200, imported.text
    findings = sum(len(v["findings"]) for v in plan)
    assert imported.json() == {"stored": {"subjects": 0, "places": 1, "inspections": len(plan),
                                          "findings": findings, "closed": findings},
                               "already_present": {"inspections": 0}}
    live_through(street, plan)
    subjects = {s["node"]: s for s in inspection.get("/subjects").json()}

    # Uploaded twice: nothing new.
    again = upload(inspection, history_workbook(plan))
    assert again.status_code == 200 and again.json() == {
        "stored": {"subjects": 0, "places": 0, "inspections": 0, "findings": 0, "closed": 0},
        "already_present": {"inspections": len(plan)}}
    assert len(inspection.get("/inspections", params={"limit": 1000}).json()) == 2 * len(plan)

    # History keeps its own dates: closed in May is closed in May.
    ledger = tasks.get("/tasks", params={"subject_id": subjects[IMPORTED]["subject_id"], "limit": 500}).json()
    assert len(ledger) == findings and {t["status"] for t in ledger} == {"closed"}
    first = min(ledger, key=lambda t: (t["found_at"], t["item_code"]))
    assert first["found_at"].startswith(f"{MONTHS[0]}-04T01:30") and first["closed_at"].startswith(
        f"{MONTHS[0]}-04T07:30")

    # The same figures as lived: ledger figures per month, then the monthly scores.
    for month in MONTHS:
        expected = support.wait_until(lambda: ledger_figures(tasks, subjects[LIVE]["subject_id"], month),
                                      message=f"live figures {month}")
        assert ledger_figures(tasks, subjects[IMPORTED]["subject_id"], month) == expected, month
        assert expected[FIGURES.index("overdue_open")] == 0 and expected[FIGURES.index("on_time_rate")] == 0.8
    lived = support.wait_until(lambda: (lambda s: s if set(MONTHS) <= set(s) else None)(monthly(scoring, LIVE)),
                               timeout=30, message="the lived months' scores")
    support.wait_until(lambda: {m: monthly(scoring, IMPORTED).get(m) for m in MONTHS}
                       == {m: monthly(scoring, LIVE).get(m) for m in MONTHS},
                       timeout=30, message="imported scores equal to the lived ones")
    lived = monthly(scoring, LIVE)
    assert {m: lived[m][1:] for m in MONTHS} == {m: (2, False) for m in MONTHS}, lived

    # No veto, no urge today, and no notice for the past; the lived community got its notices.
    assert tasks.post("/sweeps").json()["urged"] == 0
    assert scoring.get("/vetoes", params={"subject_id": IMPORTED}).json() == []
    support.wait_until(lambda: notify.get("/notifications", params={"node": LIVE}).json(),
                       message="the lived community's notices")
    assert notify.get("/notifications", params={"node": IMPORTED, "limit": 500}).json() == []

    # The bulletin of a past month counts history in its own month (both communities: 5 + 5).
    june = notify.post("/bulletins", {"period": MONTHS[1], "notify": False})
    assert june.status_code == 201, june.text
    figures = june.json()["data"]["figures"]
    assert (figures["problems_found"], figures["tasks_closed"]) == (10, 10)


@pytest.fixture
def lone_inspection(amqp_uri, database_url, monkeypatch):
    from services.plumbing import offload
    pool = offload.Pool(workers=1)  # cold: its first worker alone takes longer than 0.05 s to start
    monkeypatch.setattr(offload, "_pool", pool)
    port = support.free_port()
    config = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={"inspection": f"127.0.0.1:{port}"},
                                 MAX_BODY_BYTES=2_000_000, IMPORT_PARSE_SECONDS=0.05)
    try:
        with support.running_services(config, InspectionService):
            yield support.ApiClient(f"http://127.0.0.1:{port}")
    finally:
        pool.close()


def test_a_zip_bomb_is_refused_naming_the_file_and_a_parse_past_its_limit_is_abandoned(lone_inspection):
    """Issue 27: a 410 KB workbook expanded to a 400 MB string, held the service 3.4 s and kept
    its memory. Now its zip directory refuses it before parsing; parsing runs in a worker
    process and is abandoned past IMPORT_PARSE_SECONDS (here 0.05 s)."""
    import time
    from tests.unit.inspection.test_imports import _bomb
    bomb = _bomb(60 * 1024 * 1024)
    started = time.monotonic()
    refused = upload(lone_inspection, bomb)
    assert time.monotonic() - started < 2
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["errors"]
    assert error["field"] == "file:content_base64" and error["reason"].startswith("文件解压后过大"), error

    slow = upload(lone_inspection, history_workbook(visits()))
    assert slow.status_code == 422, slow.text
    [error] = slow.json()["errors"]
    assert error["field"] == "content_base64" and error["reason"].startswith("表格解析超时"), error
    assert lone_inspection.get("/health/live").status_code == 200
