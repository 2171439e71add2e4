"""Inspection schedules (检查计划, issue 15): a weekly rhythm, what is due, and a missed weekly
check flagged once — in the list, as a metric and as a notice — with the controllable clock."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import REGISTRY

from services.contracts.periods import CST, Period, PeriodKind
from services.inspection.service import InspectionService
from services.notify.service import NotifyService
from services.plumbing import clock
from tests import support

STREET, CHECKED, MISSED = "411502008000", "411502008001", "411502008002"


@pytest.fixture
def street(amqp_uri, database_url):
    ports = {name: support.free_port() for name in ("inspection", "notify")}
    config = support.base_config(
        amqp_uri, database_url, WEB_ADDRESSES={k: f"127.0.0.1:{p}" for k, p in ports.items()},
        INSPECTION_SCHEDULE_SWEEP_SECONDS=0, NOTIFY_BULLETIN_SCHEDULE=False, NOTIFY_POLL_INTERVAL=0.5)
    with support.running_services(config, InspectionService, NotifyService):
        yield {name: support.ApiClient(f"http://127.0.0.1:{port}") for name, port in ports.items()}


def missed_total() -> float:
    return REGISTRY.get_sample_value("chuangwei_inspection_checks_missed_total", {"frequency": "weekly"}) or 0.0


def test_a_missed_weekly_check_is_flagged_once_as_due_metric_and_notice(street):
    inspection, notify = street["inspection"], street["notify"]
    subjects = {}
    for node, name in ((CHECKED, "周家山社区"), (MISSED, "华森社区")):
        made = inspection.post("/subjects", {"subject_type": "child_unit", "node": node, "name": name})
        assert made.status_code == 201, made.text
        subjects[node] = made.json()
        assert notify.post("/contacts", {"owner_kind": "subject", "owner_id": subjects[node]["subject_id"],
                                         "node": node, "name": name, "inbox_user": f"user-{node}"}).status_code == 201

    # This week is the first of the rhythm; only 周家山社区 is checked in it.
    now = datetime.now(timezone.utc)
    week = Period.containing(PeriodKind.week, now.astimezone(CST))
    week_start, week_end = (moment.astimezone(timezone.utc) for moment in week.instants())
    clock.set_offset(week_start + timedelta(days=2, hours=3) - now)  # Wednesday 11:00 of this week
    schedule = inspection.post("/schedules", {"node": STREET, "name": "社区每周检查", "frequency": "weekly",
                                              "subject_type": "child_unit", "inspectors": ["王芳"],
                                              "starts_at": week_start.isoformat()})
    assert schedule.status_code == 201, schedule.text
    assert inspection.as_user("王芳", [("inspector", STREET)]).post("/schedules", {
        "node": STREET, "name": "x", "frequency": "daily", "place_type": "public_toilet"}).status_code == 403
    bad = inspection.post("/schedules", {"node": STREET, "name": "x", "frequency": "weekly"})
    assert bad.status_code == 422
    done = inspection.post("/inspections", {
        "kind": "routine", "subject_id": subjects[CHECKED]["subject_id"],
        "checklist": {"version": "2010.1", "code": "national-ten-areas"}, "inspectors": ["王芳"],
        "inspected_at": (week_start + timedelta(days=1)).isoformat(), "results": []})
    assert done.status_code == 201, done.text

    due = {d["target_name"]: d for d in inspection.get("/schedules/due").json()}
    assert set(due) == {"周家山社区", "华森社区"}
    assert due["周家山社区"]["checked"] is True and due["华森社区"]["checked"] is False
    assert due["华森社区"]["period"] == week.key and due["华森社区"]["missed_last_period"] is False
    assert inspection.post("/schedules/sweep").json() == {"flagged": 0}  # the week has not ended

    # The next week: the missed check of last week is flagged, once.
    before = missed_total()
    clock.set_offset(week_end + timedelta(hours=9) - now)
    assert inspection.post("/schedules/sweep").json() == {"flagged": 1}
    assert inspection.post("/schedules/sweep").json() == {"flagged": 0}
    assert missed_total() == before + 1
    [missed] = inspection.get("/schedules/missed").json()
    assert (missed["target_name"], missed["period"], missed["target_node"]) == ("华森社区", week.key, MISSED)
    due = {d["target_name"]: d for d in inspection.get("/schedules/due").json()}
    assert due["华森社区"]["missed_last_period"] is True and due["周家山社区"]["missed_last_period"] is False
    following = Period.containing(PeriodKind.week, (week_end + timedelta(hours=9)).astimezone(CST))
    assert due["华森社区"]["checked"] is False and due["华森社区"]["period"] == following.key

    [notice] = support.wait_until(lambda: notify.get("/notifications", params={"notice_type": "missed_check"}).json(),
                                  message="the missed-check notice")
    assert notice["node"] == MISSED and notice["inbox_user"] == f"user-{MISSED}"
    assert "华森社区" in notice["title"] and week.key in notice["title"]
    assert "社区每周检查" in notice["body_markdown"]
    assert notify.get("/notifications", params={"node": CHECKED}).json() == []


def test_an_unreleased_unannounced_check_is_not_due_news_to_the_subject(street):
    """GET /schedules/due must not tell the subject side of a 暗访 before its release: for them
    the target is unchecked, without the visit's time (and so would be "missed" when the period
    ends). The office sees it checked; after the release, everyone does."""
    inspection = street["inspection"]
    subject = inspection.post("/subjects", {"subject_type": "child_unit", "node": CHECKED, "name": "周家山社区"})
    assert subject.status_code == 201, subject.text
    subject = subject.json()
    now = datetime.now(timezone.utc)
    week = Period.containing(PeriodKind.week, now.astimezone(CST))
    week_start = week.instants()[0].astimezone(timezone.utc)
    schedule = inspection.post("/schedules", {"node": STREET, "name": "社区每周检查", "frequency": "weekly",
                                              "subject_type": "child_unit", "inspectors": ["王芳"],
                                              "starts_at": week_start.isoformat()})
    assert schedule.status_code == 201, schedule.text
    visited = max(week_start + timedelta(minutes=1), now - timedelta(minutes=5))
    secret = inspection.post("/inspections", {
        "kind": "unannounced", "subject_id": subject["subject_id"],
        "checklist": {"version": "2010.1", "code": "national-ten-areas"}, "inspectors": ["王芳"],
        "inspected_at": visited.isoformat(), "results": []})
    assert secret.status_code == 201, secret.text

    def due_for(caller) -> dict:
        answer = caller.get("/schedules/due")
        assert answer.status_code == 200, answer.text
        [row] = [d for d in answer.json() if d["target_id"] == subject["subject_id"]]
        return row

    subject_side = [inspection.as_user("赵敏", [("rectifier", CHECKED)]),
                    inspection.as_user("钱进", [("viewer", CHECKED)]),
                    inspection.as_user("孙丽", [("administrator", CHECKED)]),
                    inspection.as_user("街道整改人", [("rectifier", STREET)])]
    office = [inspection.as_user("王芳", [("inspector", STREET)]), inspection.as_user("周敏", [("viewer", STREET)])]
    for caller in subject_side:
        row = due_for(caller)
        assert row["checked"] is False and row["last_inspected_at"] is None, row
    for caller in office:
        row = due_for(caller)
        assert row["checked"] is True and row["last_inspected_at"] is not None, row

    released = inspection.post(f"/inspections/{secret.json()['inspection_id']}/release")
    assert released.status_code == 200, released.text
    for caller in subject_side:
        assert due_for(caller)["checked"] is True
