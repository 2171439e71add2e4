"""A 数字城管 case across tiers (issue 16): the platform posts it at the street's intake, the
responsible community runs a stack of its own, so the task is handed down and handled in
the community's ledger — and everything the street's side sees follows from there: the
street's mirror of the task, the case status the reporter reads, and how the case counts
for the community (`case_handled`: overdue, then closed late). Two stacks, one federation
link, the real broker and PostgreSQL; the deadline passes on the controllable clock."""
from __future__ import annotations

from datetime import timedelta

import pytest

from services.intake.service import IntakeService
from services.plumbing import clock
from tests import support
from tests.integration.test_intake_service import case_of, platform, post_form
from tests.system.test_tiers import settle
from tests.tiers import JINNIUSHAN, ZHOUJIASHAN

pytestmark = pytest.mark.system

TIERS = [
    (JINNIUSHAN, "金牛山街道", None, [ZHOUJIASHAN]),
    (ZHOUJIASHAN, "周家山社区", JINNIUSHAN, []),
]
AFTER = {"uri": "https://photos.example.cn/after.jpg", "sha256": "ab" * 32}


def task(stack, task_id: str) -> dict | None:
    response = stack.tasks.get(f"/tasks/{task_id}")
    return response.json() if response.status_code == 200 else None


def handled(street, case_id: str) -> list[str]:
    """How the case was published as counting for its subject, in order (case_handled)."""
    return [row[0] for row in support.scalar_rows(
        street.database_url, "select body -> 'payload' ->> 'outcome' from intake_outbox "
                             f"where event_type = 'case_handled' and body -> 'payload' ->> 'case_id' = '{case_id}' "
                             "order by id")]


@pytest.fixture
def street_with_intake(tier_chain, infrastructure):
    config, stacks = tier_chain(TIERS)
    street = stacks[JINNIUSHAN]
    port = support.free_port()
    intake_config = support.base_config(support.with_vhost(infrastructure["amqp_uri"], street.vhost),
                                        street.database_url, node=JINNIUSHAN, max_workers=3,
                                        WEB_ADDRESSES={"intake": f"127.0.0.1:{port}"})
    with support.running_services(intake_config, IntakeService):
        try:
            yield street, stacks[ZHOUJIASHAN], f"http://127.0.0.1:{port}"
        finally:
            clock.reset()


def test_a_case_handed_down_to_a_communitys_own_stack_is_followed_at_the_street(street_with_intake):
    street, community, intake_url = street_with_intake
    subject = street.inspection.post("/subjects", {"subject_type": "child_unit", "node": ZHOUJIASHAN,
                                                   "name": "周家山社区"}).json()
    place = street.inspection.post("/places", {"place_type": "public_toilet", "name": "周家山路公厕",
                                               "node": ZHOUJIASHAN,
                                               "responsible_subject_id": subject["subject_id"]}).json()
    recorded = street.inspection.post("/inspections", {
        "kind": "routine", "subject_id": subject["subject_id"], "place_id": place["place_id"],
        "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳"],
        "inspected_at": clock.now().isoformat(), "results": []})
    assert recorded.status_code == 201, recorded.text
    settle(lambda: support.scalar(street.database_url, "select count(*) from intake_places") == 1,
           "intake to learn the place")

    client = platform(intake_url)
    created = post_form(client, {"service_code": "0106", "description": "公厕有积粪，无人保洁",
                                 "address_id": place["place_id"]})
    assert created.status_code == 201, created.text
    [receipt] = created.json()
    case_id = receipt["service_request_id"]
    assert receipt["service_notice"].startswith("已受理，派遣至周家山社区，处置时限2小时")

    # Handed down: the street keeps a mirror, the community's ledger owns the lifecycle.
    mirror = settle(lambda: task(street, case_id), "the street's task")
    assert (mirror["delegated_to"], mirror["inspection_kind"]) == (ZHOUJIASHAN, "digital_city")
    owned = settle(lambda: task(community, case_id), "the task in the community's ledger")
    assert (owned["owner_node"], owned["inspecting_node"], owned["delegated_to"]) == (ZHOUJIASHAN, JINNIUSHAN, None)
    assert support.wait_until(lambda: (c := case_of(client, case_id))["case_status"] == "open" and c,
                              message="the case open")["agency_responsible"] == "周家山社区"

    # The two hours pass without a fix: the community's sweep marks it overdue, the street hears.
    clock.advance(timedelta(hours=3))
    swept = community.tasks.as_user("周家山社区 管理员", [("administrator", ZHOUJIASHAN)]).post("/sweeps")
    assert swept.status_code == 201, swept.text
    assert swept.json()["marked_overdue"] == 1
    settle(lambda: task(street, case_id)["overdue_since"] is not None, "the street's mirror overdue")
    settle(lambda: handled(street, case_id) == ["overdue"], "the case counted overdue at the street")

    rectifier = community.tasks.as_user("周家山社区联络员", [("rectifier", ZHOUJIASHAN)])
    assert rectifier.post(f"/tasks/{case_id}/start", {"note": "已安排保洁"}).status_code == 200
    settle(lambda: case_of(client, case_id)["case_status"] == "in_progress", "the reporter sees it in progress")
    assert rectifier.post(f"/tasks/{case_id}/fix", {"note": "已清理消毒", "after_photos": [AFTER]}).status_code == 200
    # The street's inspector verifies in the community's ledger (the inspecting side closes out).
    inspector = community.tasks.as_user("金牛山街道 王芳", [("inspector", JINNIUSHAN)])
    verified = inspector.post(f"/tasks/{case_id}/verify", {"note": "复查合格"})
    assert verified.status_code == 200, verified.text

    closed = settle(lambda: (lambda c: c if c["status"] == "closed" else None)(case_of(client, case_id)),
                    "the reporter sees the case closed")
    assert (closed["case_status"], closed["status_notes"]) == ("closed", "已核查结案")
    assert task(street, case_id)["status"] == "closed"
    settle(lambda: handled(street, case_id) == ["overdue", "closed_late"], "the case counted closed late")
