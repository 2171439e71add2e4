"""Two tiers (浉河区 above 金牛山街道), each its own stack on its own vhost and database, linked
by RabbitMQ federation: the street's vector density verdicts and satisfaction rates reach the
district, the latest revision winning."""
from __future__ import annotations

import uuid
from contextlib import ExitStack

import pytest

from services.indicators.service import IndicatorsService
from services.tools import federation
from tests import support

pytestmark = pytest.mark.system

DISTRICT, STREET = "411502000000", "411502008000"     # 浉河区, 金牛山街道
ZHOUJIASHAN, HUASEN = "411502008001", "411502008002"
MONTH = "2026-11"


@pytest.fixture
def two_tiers(infrastructure, make_database):
    run = uuid.uuid4().hex[:6]
    amqp = infrastructure["amqp_uri"]
    host = amqp.split("@", 1)[1].split("/", 1)[0]
    tiers = [(DISTRICT, "浉河区", None), (STREET, "金牛山街道", DISTRICT)]
    config = federation.TierConfig(
        management_api=infrastructure["rabbit_api"], amqp_host=host,
        tiers=[{"node": node, "name": name, "vhost": f"t{run}-{node}", "parent": parent}
               for node, name, parent in tiers])
    with ExitStack() as stack:
        federation.wire(config)
        stack.callback(federation.unwire, config)
        support.wait_until(lambda: sum(1 for l in federation.link_status(config) if l["status"] == "running") == 2,
                           timeout=40, message="2 running federation links")
        apis = {}
        for node, _, _ in tiers:
            port = support.free_port()
            service_config = support.base_config(
                support.with_vhost(amqp, f"t{run}-{node}"), make_database(), node=node,
                WEB_ADDRESSES={"indicators": f"127.0.0.1:{port}"},
                CHILD_STACKS=[STREET] if node == DISTRICT else [], PARENT_STACK=DISTRICT if node == STREET else "")
            stack.enter_context(support.running_services(service_config, IndicatorsService))
            apis[node] = support.ApiClient(f"http://127.0.0.1:{port}")
        yield apis


def reports(api, kind):
    response = api.get(f"/children/indicators?period={MONTH}&kind={kind}")
    assert response.status_code == 200, response.text
    return {r["area"]: r for r in response.json()}


def test_the_district_sees_the_streets_verdicts_and_rates(two_tiers):
    district, street = two_tiers[DISTRICT], two_tiers[STREET]
    readings = [("rat", "powder", 2.0), ("mosquito", "breteau", 7), ("fly", "fly_rooms", 7.2),
                ("cockroach", "cockroach_rooms", 2.4)]
    response = street.post("/vector/forms", {
        "idempotency_key": "cdc-zjs", "area": ZHOUJIASHAN, "period": MONTH, "source": "浉河区疾控中心",
        "readings": [{"species": s, "method": m, "value": v, "sampled_on": "2026-11-05"} for s, m, v in readings]})
    assert response.status_code == 201 and response.json()["verdict"]["verdict"] == "fail"

    def heard():
        report = reports(district, "vector").get(ZHOUJIASHAN)
        return report if report and report["report"]["verdict"] == "fail" else None
    report = support.wait_until(heard, timeout=30, message="the street's verdict at the district")
    assert report["reporting_node"] == STREET and report["revision"] == 1
    assert report["report"]["explanation"].startswith("蚊、蝇超过控制水平")

    # A later change supersedes it at the district (a higher revision).
    fixed = street.post("/vector/forms", {
        "idempotency_key": "cdc-zjs-2", "area": ZHOUJIASHAN, "period": MONTH, "source": "浉河区疾控中心",
        "readings": [{"species": "fly", "method": "fly_rooms", "value": 4.8, "sampled_on": "2026-11-20"}]})
    assert fixed.json()["verdict"]["verdict"] == "pass"      # fly (7.2 + 4.8)/2 = 6.0 → at the level
    support.wait_until(lambda: reports(district, "vector")[ZHOUJIASHAN]["revision"] == 2, timeout=30,
                       message="revision 2 at the district")
    assert reports(district, "vector")[ZHOUJIASHAN]["report"]["verdict"] == "pass"

    # A survey wave closed at the street: its flagged area appears at the district.
    scale = [{"value": "5", "label": "满意"}, {"value": "1", "label": "不满意"}]
    assert street.post("/questionnaires", {"code": "residents", "title": "群众满意度调查", "items": [
        {"code": "Q1", "text": "您对公厕卫生是否满意？", "place_type": "public_toilet", "scale": scale,
         "satisfied": ["5"]}]}).status_code == 201
    wave = street.post("/surveys", {"questionnaire": {"code": "residents", "version": 1}, "period": MONTH,
                                    "seed": 7, "areas": [{"node": HUASEN, "frame_size": 100, "sample_size": 4}]})
    assert wave.status_code == 201, wave.text
    for index, respondent in enumerate(wave.json()["respondents"]):
        answered = street.post(f"/surveys/{wave.json()['survey_id']}/responses", {
            "respondent_id": respondent["respondent_id"],
            "answers": [{"item_code": "Q1", "value": "5" if index < 3 else "1"}]})
        assert answered.status_code == 201, answered.text
    assert street.post(f"/surveys/{wave.json()['survey_id']}/close").json()["flagged"] == [HUASEN]
    rate = support.wait_until(lambda: reports(district, "satisfaction").get(HUASEN), timeout=30,
                              message="the street's satisfaction rate at the district")
    # 3/4 = 0.75 → flagged; Wilson: centre (0.75 + 0.48018)/1.96037 = 0.62753, half 1.96·√(0.046875 + 0.060023)/1.96037
    # = 0.32689 → [0.3006, 0.9544]
    assert (rate["report"]["rate"], rate["report"]["flagged"], rate["report"]["ci_low"], rate["report"]["ci_high"]) \
        == (0.75, True, 0.3006, 0.9544)
