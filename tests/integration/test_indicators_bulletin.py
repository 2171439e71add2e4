"""The measured indicators in the monthly bulletin (月度通报): the indicators service and notify
in one stack on the real broker and database; an area that fails the vector density rule and
an area below 90 % satisfaction appear in the bulletin notify generates."""
from __future__ import annotations

import pytest

from services.indicators.service import IndicatorsService
from services.notify.service import NotifyService
from tests import support

pytestmark = pytest.mark.integration

ZHOUJIASHAN, HUASEN = "411502008001", "411502008002"
MONTH = "2026-11"


@pytest.fixture
def stack(amqp_uri, database_url):
    ports = {name: support.free_port() for name in ("indicators", "notify")}
    config = support.base_config(amqp_uri, database_url,
                                 WEB_ADDRESSES={name: f"127.0.0.1:{port}" for name, port in ports.items()},
                                 NOTIFY_BULLETIN_SCHEDULE="false", NOTIFY_POLL_INTERVAL=0.2)
    with support.running_services(config, IndicatorsService, NotifyService):
        yield {name: support.ApiClient(f"http://127.0.0.1:{port}") for name, port in ports.items()}


def test_a_failing_and_a_flagged_area_appear_in_the_bulletin(stack, database_url):
    indicators, notify = stack["indicators"], stack["notify"]
    for key, area, readings in [
            ("f-zjs", ZHOUJIASHAN, [("rat", "powder", 2.0), ("mosquito", "breteau", 7), ("fly", "fly_rooms", 7.2),
                                    ("cockroach", "cockroach_rooms", 2.4)]),
            ("f-hs", HUASEN, [("rat", "powder", 2.5), ("mosquito", "breteau", 4), ("fly", "fly_rooms", 5.4),
                              ("cockroach", "cockroach_rooms", 8.7)])]:
        response = indicators.post("/vector/forms", {
            "idempotency_key": key, "area": area, "period": MONTH, "source": "浉河区疾控中心",
            "readings": [{"species": s, "method": m, "value": v, "sampled_on": "2026-11-05"} for s, m, v in readings]})
        assert response.status_code == 201, response.text

    scale = [{"value": "5", "label": "满意"}, {"value": "1", "label": "不满意"}]
    assert indicators.post("/questionnaires", {"code": "residents", "title": "群众满意度调查", "items": [
        {"code": "Q1", "text": "您对公厕卫生是否满意？", "place_type": "public_toilet", "scale": scale,
         "satisfied": ["5"]}]}).status_code == 201
    wave = indicators.post("/surveys", {"questionnaire": {"code": "residents", "version": 1}, "period": MONTH,
                                        "seed": 3, "areas": [{"node": HUASEN, "frame_size": 50, "sample_size": 4}]})
    survey_id = wave.json()["survey_id"]
    for index, respondent in enumerate(wave.json()["respondents"]):
        assert indicators.post(f"/surveys/{survey_id}/responses", {
            "respondent_id": respondent["respondent_id"],
            "answers": [{"item_code": "Q1", "value": "5" if index < 3 else "1"}]}).status_code == 201
    assert indicators.post(f"/surveys/{survey_id}/close").json()["flagged"] == [HUASEN]

    support.wait_until(lambda: support.scalar(database_url, "select count(*) from notify_indicators") == 3,
                       message="notify's projection of the indicators")
    response = notify.post("/bulletins", {"period": MONTH, "notify": False})
    assert response.status_code == 201, response.text
    section = response.json()["data"]["indicators"]
    assert (section["vector_areas"], section["satisfaction_areas"]) == (2, 1)
    assert [(v["area"], v["explanation"][:8]) for v in section["vector_failed"]] == [(ZHOUJIASHAN, "蚊、蝇超过控制水")]
    # 3/4 = 75 %, Wilson [0.3006, 0.9544] (hand computation in tests/system/test_indicators_tiers.py).
    assert [(s["area"], s["rate"], s["answers"], s["ci_low"], s["ci_high"]) for s in section["satisfaction_flagged"]] \
        == [(HUASEN, 0.75, 4, 0.3006, 0.9544)]

    markdown = notify.get(f"/bulletins/{response.json()['bulletin_id']}/markdown").text
    assert "### 九、病媒生物密度与群众满意率" in markdown
    assert "病媒生物密度（四害）：监测 2 个片区，未达标 1 个。" in markdown
    assert "- 周家山社区居民委员会：蚊、蝇超过控制水平（蚊为控制水平的 1.40 倍，蝇为控制水平的 1.20 倍）" in markdown
    assert ("- 华森社区居民委员会：满意率 75.0%（4 份有效回答，95% 置信区间 30.1%–95.4%，标准 90.0%）"
            in markdown)
    html = notify.get(f"/bulletins/{response.json()['bulletin_id']}/html").text
    assert "<h2>九、病媒生物密度与群众满意率</h2>" in html and "华森社区居民委员会：满意率 75.0%" in html
