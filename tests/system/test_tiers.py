"""Four tiers as four stacks (city → district → street → community) on the local broker,
linked by RabbitMQ federation: scores roll upward, tasks flow downward, and a link outage
loses nothing and counts nothing twice."""
from __future__ import annotations

import pytest

from services.tools import federation
from tests import support
from tests.tiers import (CITY, JINNIUSHAN, LAOCHENG, MONTH, PHOTO, PINGQIAO, SHIHE, TIERS, XIANGTANG,
                         ZHOUJIASHAN, inspect, subject)

pytestmark = pytest.mark.system


def ranking(stack, tier):
    response = stack.scoring.get(f"/rankings?period={MONTH}&tier={tier}")
    assert response.status_code == 200, response.text
    return response.json()


def order(stack, tier):
    return [r["node"] for r in ranking(stack, tier)["ranking"]]


def score_of(stack, tier, node):
    rows = {r["node"]: r for r in ranking(stack, tier)["ranking"] + ranking(stack, tier)["below_minimum_sample"]}
    return rows.get(node, {}).get("score")


def release(stack, inspection):
    """The inspecting office releases an unannounced inspection (暗访公开): its inspection
    service publishes `inspection_released`."""
    response = stack.inspection.post(f"/inspections/{inspection['inspection_id']}/release")
    assert response.status_code == 200, response.text
    assert response.json()["released_at"]


def settle(predicate, message, timeout=60):
    return support.wait_until(predicate, timeout=timeout, interval=0.3, message=message)


# Twelve services on a loaded machine: each test starts a four-tier chain and waits on several
# federation hops, more than the suite's default 300 s allows in the worst case.
FOUR_TIERS_TIMEOUT = 600


@pytest.mark.timeout(FOUR_TIERS_TIMEOUT)
def test_scores_roll_up_four_tiers_and_a_link_outage_loses_and_doubles_nothing(tier_chain):
    config, stacks = tier_chain(TIERS)
    city, district, street, community = (stacks[n] for n in (CITY, SHIHE, JINNIUSHAN, ZHOUJIASHAN))

    # --- each tier inspects what it evaluates ------------------------------------------------
    self_id = subject(community.inspection, ZHOUJIASHAN, "周家山社区")      # the community's self-checks (自查)
    inspect(community.inspection, self_id, 96, 2, kind="self_check")
    inspect(community.inspection, self_id, 94, 9, kind="self_check")            # community: 95

    zhou = subject(street.inspection, ZHOUJIASHAN, "周家山社区")
    xiang = subject(street.inspection, XIANGTANG, "飨堂社区")
    inspect(street.inspection, zhou, 90, 3)
    inspect(street.inspection, zhou, 92, 10)                                    # street's own view: 91
    inspect(street.inspection, xiang, 88, 3)
    inspect(street.inspection, xiang, 86, 10)                                   # 飨堂: 87

    laocheng = subject(district.inspection, LAOCHENG, "老城街道")
    inspect(district.inspection, laocheng, 88, 4)
    inspect(district.inspection, laocheng, 91, 11)                              # 老城: 89.5

    pingqiao = subject(city.inspection, PINGQIAO, "平桥区")
    inspect(city.inspection, pingqiao, 88, 5, kind="unannounced")
    inspect(city.inspection, pingqiao, 90, 12, kind="unannounced")              # 平桥: 89

    # 周家山 at the street = ½ street's own inspections (91) + ½ the community's report (95) = 93;
    # the street = mean(93, 87) = 90; the district: 金牛山 90 (the street's report), 老城 89.5,
    # itself 89.75; the city: 浉河 89.75 (the district's report) ahead of 平桥 89.
    settle(lambda: score_of(street, "community", ZHOUJIASHAN) == 93.0, "street: 周家山 at 93")
    assert order(street, "community") == [ZHOUJIASHAN, XIANGTANG]
    # A figure can pass through the final value on its way (金牛山 is 90 after its first
    # inspection alone, one input, unranked): wait for the value and the ranking together.
    settle(lambda: score_of(district, "street", JINNIUSHAN) == 90.0
           and order(district, "street") == [JINNIUSHAN, LAOCHENG], "district: 金牛山 at 90, first")
    settle(lambda: score_of(city, "district", SHIHE) == 89.75
           and order(city, "district") == [SHIHE, PINGQIAO], "city: 浉河 at 89.75, first")

    # --- one community inspection changes the street, district and city rankings ---------------
    inspect(community.inspection, self_id, 56, 16, kind="self_check")           # community: (96+94+56)/3 = 82
    # street: 周家山 (91+82)/2 = 86.5 < 飨堂 87; street = 86.75; district: 金牛山 86.75 < 老城 89.5,
    # district = 88.125; city: 浉河 88.125 < 平桥 89.
    settle(lambda: order(street, "community") == [XIANGTANG, ZHOUJIASHAN], "street ranking flips")
    assert score_of(street, "community", ZHOUJIASHAN) == 86.5
    settle(lambda: order(district, "street") == [LAOCHENG, JINNIUSHAN], "district ranking flips")
    assert score_of(district, "street", JINNIUSHAN) == 86.75
    settle(lambda: order(city, "district") == [PINGQIAO, SHIHE], "city ranking flips")
    assert score_of(city, "district", SHIHE) == pytest.approx(88.125, abs=0.006)

    # --- a link outage: the street's reports wait, then arrive, each exactly once -------------
    def received():
        return support.scalar(district.database_url, "select count(*) from scoring_processed_events "
                                                     "where consumer = 'scoring.on_child_score_published'")

    def sent():
        return support.scalar(street.database_url,
                              "select count(*) from scoring_outbox where exchange = 'chuangwei.up'")
    settle(lambda: received() == sent(), "every report so far heard")
    sent_before = sent()
    federation.set_upward_link(config, JINNIUSHAN, enabled=False)
    settle(lambda: any(l["upstream"] == f"child-{JINNIUSHAN}" and l["status"] != "running"
                       for l in federation.link_status(config)), "street → district link down", timeout=30)
    inspect(community.inspection, self_id, 100, 17, kind="self_check")          # community: 86.5 → 周家山 88.75
    inspect(street.inspection, xiang, 96, 17)                                   # 飨堂: 90 → street 89.375
    settle(lambda: score_of(street, "community", XIANGTANG) == 90.0
           and score_of(street, "community", ZHOUJIASHAN) == 88.75, "street updated while cut off")
    settle(lambda: support.scalar(street.database_url, "select count(*) from scoring_outbox "
                                                       "where exchange = 'chuangwei.up' and published_at is null") == 0,
           "street's reports left its outbox")
    assert score_of(district, "street", JINNIUSHAN) == 86.75                    # the district has not heard
    federation.set_upward_link(config, JINNIUSHAN, enabled=True)
    settle(lambda: score_of(district, "street", JINNIUSHAN) == pytest.approx(89.375, abs=0.006),
           "district catches up after the outage")
    total = sent()
    assert total > sent_before                                      # the outage held several reports
    settle(lambda: received() == total, "every report sent during the outage processed")
    freshness = {f["child"]: f for f in district.scoring.get("/children/freshness").json()}
    assert freshness[JINNIUSHAN]["events"] == total                 # each report heard exactly once
    settle(lambda: order(city, "district") == [SHIHE, PINGQIAO], "city ranking after the outage")
    assert score_of(city, "district", SHIHE) == pytest.approx((89.375 + 89.5) / 2, abs=0.006)



@pytest.mark.timeout(FOUR_TIERS_TIMEOUT)
def test_a_city_inspection_of_a_community_is_handled_in_its_ledger_and_closed_at_every_tier(tier_chain):
    _, stacks = tier_chain(TIERS)
    city, district, street, community = (stacks[n] for n in (CITY, SHIHE, JINNIUSHAN, ZHOUJIASHAN))
    city_zhou = subject(city.inspection, ZHOUJIASHAN, "周家山社区")
    inspection = inspect(city.inspection, city_zhou, 96, 18, kind="unannounced",
                         results=[{"item_code": "CITY-01", "findings": 1, "deduction": 4,
                                   "note": "背街小巷垃圾堆积", "evidence": [PHOTO],
                                   "deadline_at": "2026-11-30T18:00:00+08:00"}])
    city_task = settle(lambda: next((t for t in city.tasks.get("/tasks?limit=1000").json()
                                     if t["inspection_id"] == inspection["inspection_id"]), None), "city's task")
    assert city_task["delegated_to"] == SHIHE and city_task["item_code"] == "CITY-01"
    assert city_task["embargoed"] is True                           # 暗访: held at the city until released
    task_id = city_task["task_id"]
    assert _task(district, task_id) is None
    release(city, inspection)
    owned = settle(lambda: _task(community, task_id), "task in the community's ledger")
    assert owned["delegated_to"] is None and owned["owner_node"] == ZHOUJIASHAN
    assert owned["inspecting_node"] == CITY and owned["item_code"] == "CITY-01"
    assert _task(street, task_id)["delegated_to"] == ZHOUJIASHAN
    assert _task(district, task_id)["delegated_to"] == JINNIUSHAN
    refused = city.tasks.post(f"/tasks/{task_id}/start", {})
    assert refused.status_code == 409                               # handled in the community's ledger
    contact = community.tasks.as_user("周家山社区 张伟", [("rectifier", ZHOUJIASHAN)])
    assert contact.get(f"/tasks/{task_id}").json()["inspectors"] == []   # never who inspected (暗访)

    def act(client, action, body):
        response = client.post(f"/tasks/{task_id}/{action}", body)
        assert response.status_code == 200, response.text
    act(contact, "start", {"note": "已安排清运"})
    # The community cannot solve it alone: the request goes up to the street, whose answer comes back.
    act(contact, "escalate", {"reason": "需街道协调环卫车辆"})
    request = settle(lambda: next((r for r in street.tasks.get("/coordination").json() if r["task_id"] == task_id),
                                  None), "escalation at the street")
    assert request["from_node"] == ZHOUJIASHAN and request["status"] == "open"
    street_office = street.tasks.as_user("金牛山街道 李明", [("administrator", JINNIUSHAN)])
    answered = street_office.post(f"/coordination/{task_id}/answer", {"note": "已协调环卫所车辆，明日清运"})
    assert answered.status_code == 200, answered.text
    assert answered.json()["answered_by"] == "金牛山街道 李明"
    settle(lambda: _task(community, task_id)["status"] == "in_progress", "the street's answer reaches the community")
    act(contact, "fix", {"note": "垃圾已清运", "after_photos": [{"uri": "photos/after.jpg", "sha256": "d" * 64}]})
    # The city's inspector verifies in the community's ledger; the community's own inspector could not.
    own_inspector = community.tasks.as_user("周家山社区 刘洋", [("inspector", ZHOUJIASHAN)])
    assert own_inspector.post(f"/tasks/{task_id}/verify", {}).status_code == 403
    act(community.tasks.as_user("市创卫办 王芳", [("inspector", CITY)]), "verify", {"note": "复查合格，销号"})
    for tier in (street, district, city):
        settle(lambda: _task(tier, task_id)["status"] == "closed", f"close-out seen at {tier.name}")
    # The status change and the close-out (who verified, on time) are two events, mirrored in
    # whatever order they arrive: wait for the close-out, not just the status.
    closed = settle(lambda: (lambda t: t if t["verified_by"] is not None else None)(_task(city, task_id)),
                    "the close-out's details at the city")
    # Events about an unannounced inspection's task name the inspecting office, not the inspector.
    assert closed["verified_by"] == "检查组" and closed["on_time"] is True
    assert _task(community, task_id)["verified_by"] == "市创卫办 王芳"     # the owning ledger keeps who


def _task(stack, task_id):
    response = stack.tasks.get(f"/tasks/{task_id}")
    return response.json() if response.status_code == 200 else None
