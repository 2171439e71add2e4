"""Scoring above the street, over the real broker and PostgreSQL: a parent tier's sample (样本)
counts the inspections behind a child stack's report, and a city stack runs the city scheme
(市级考评办法, SCORING_POLICY=city) end to end. Every expected figure is worked out by hand."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer as KombuProducer

from services.contracts.tiers import CHILDREN_EXCHANGE, routing_key as tier_routing_key
from services.inspection.service import InspectionService
from services.scoring.service import ScoringService
from tests import support

pytestmark = pytest.mark.integration

CITY, SHIHE, PINGQIAO, LUOSHAN = "411500000000", "411502000000", "411503000000", "411521000000"
JINNIUSHAN, LAOCHENG = "411502008000", "411502001000"   # 金牛山街道, 老城街道: streets of 浉河区
SAMPLE = Path(support.ROOT) / "services/contracts/events/samples/score_published.v1.json"


def start_stack(amqp_uri, database_url, node, **extra):
    ports = {"inspection": support.free_port(), "scoring": support.free_port()}
    config = support.base_config(amqp_uri, database_url, node=node,
                                 WEB_ADDRESSES={svc: f"127.0.0.1:{port}" for svc, port in ports.items()}, **extra)
    return config, {svc: support.ApiClient(f"http://127.0.0.1:{port}") for svc, port in ports.items()}


def subject(api, node, name):
    response = api.post("/subjects", {"subject_type": "child_unit", "node": node, "name": name})
    assert response.status_code == 201, response.text
    return response.json()["subject_id"]


def inspect(api, subject_id, score, day, kind="routine"):
    """An inspection on the 100-point public-toilet checklist scoring exactly `score`."""
    left, results = 100 - score, []
    for item, cap in (("PT-02", 20), ("PT-03", 15), ("PT-04", 15)):
        if min(left, cap):
            results.append({"item_code": item, "findings": 1, "deduction": min(left, cap)})
        left -= min(left, cap)
    assert left == 0
    response = api.post("/inspections", {
        "kind": kind, "subject_id": subject_id, "checklist": {"version": "2010.1", "code": "public-toilet"},
        "inspectors": ["检查组"], "inspected_at": f"{day}T10:00:00+08:00", "results": results})
    assert response.status_code == 201, response.text
    assert response.json()["score"] == score


def ranking(api, period, tier):
    response = api.get("/rankings", params={"period": period, "tier": tier})
    assert response.status_code == 200, response.text
    return response.json()


def rows(table) -> dict[str, dict]:
    return {r["node"]: r for r in table["ranking"] + table["below_minimum_sample"]}


def report_from_child(amqp_uri, child, name, period, score, inputs, revision=1):
    """A child stack's own aggregate, as federation delivers it on this tier's `chuangwei.children`."""
    body = json.loads(SAMPLE.read_text(encoding="utf-8"))
    body["event_id"] = str(uuid.uuid4())
    body["producer"] = {"node": child, "service": "scoring"}
    body["payload"].update(scoring_node=child, period_kind="month", period=period, score=score, scale=100,
                           revision=revision, inputs=inputs, rank=None, peers=0, ranked=False,
                           subject={"subject_id": child, "node": child, "name": name, "subject_type": "child_unit"})
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        exchange = Exchange(CHILDREN_EXCHANGE, type="topic", durable=True)
        exchange(conn.default_channel).declare()
        KombuProducer(conn.default_channel).publish(body, exchange=exchange,
                                                    routing_key=tier_routing_key("score_published", child),
                                                    serializer="json", delivery_mode=2, message_id=body["event_id"])


def test_a_parent_tiers_sample_counts_the_inspections_behind_a_childs_report(amqp_uri, database_url, vhost,
                                                                           rabbit_admin):
    """The street scheme ranks a subject from 2 inspections on. 金牛山's report stands for the
    4 inspections behind it; 老城's for 1, short of the sample until the district inspects
    老城 itself: 1 + 1 = 2, and its score is ½ own 90 + ½ report 80 = 85."""
    config, api = start_stack(amqp_uri, database_url, SHIHE, CHILD_STACKS=[JINNIUSHAN, LAOCHENG])
    with support.running_services(config, InspectionService, ScoringService):
        queue = "evt-tier-score_published--scoring.on_child_score_published"
        support.wait_until(lambda: rabbit_admin.queue(vhost, queue), message=f"queue {queue}")
        report_from_child(amqp_uri, JINNIUSHAN, "金牛山街道", "2026-11", 90.0, inputs=4)
        report_from_child(amqp_uri, LAOCHENG, "老城街道", "2026-11", 80.0, inputs=1)
        table = support.wait_until(lambda: (lambda t: t if len(rows(t)) == 2 else None)(
            ranking(api["scoring"], "2026-11", "street")), message="both reports scored")
        assert [(r["node"], r["score"], r["inputs"], r["rank"]) for r in table["ranking"]] == [(JINNIUSHAN, 90.0, 4, 1)]
        [short] = table["below_minimum_sample"]
        assert (short["node"], short["score"], short["inputs"], short["ranked"]) == (LAOCHENG, 80.0, 1, False)

        inspect(api["inspection"], subject(api["inspection"], LAOCHENG, "老城街道"), 90, "2026-11-10")
        table = support.wait_until(lambda: (lambda t: t if len(t["ranking"]) == 2 else None)(
            ranking(api["scoring"], "2026-11", "street")), message="老城 ranked with its own inspection")
        assert [(r["node"], r["score"], r["inputs"], r["rank"]) for r in table["ranking"]] == [
            (JINNIUSHAN, 90.0, 4, 1), (LAOCHENG, 85.0, 2, 2)]
        assert table["below_minimum_sample"] == []


def test_a_silent_childs_figures_are_marked_stale_once_the_policy_allows_no_longer(amqp_uri, database_url, vhost,
                                                                                   rabbit_admin):
    """The street scheme allows a child 48 h of silence (rollup.stale_after_hours). 金牛山 last
    reported three days ago, 老城 just now: only 金牛山's figure is marked, in the ranking,
    the history and the explanation; a new report clears it."""
    from datetime import datetime, timedelta, timezone
    from sqlalchemy import update
    from sqlalchemy.orm import Session
    from services.plumbing.db import make_engine
    from services.scoring.models import ChildFreshness

    config, api = start_stack(amqp_uri, database_url, SHIHE, CHILD_STACKS=[JINNIUSHAN, LAOCHENG])
    with support.running_services(config, InspectionService, ScoringService):
        queue = "evt-tier-score_published--scoring.on_child_score_published"
        support.wait_until(lambda: rabbit_admin.queue(vhost, queue), message=f"queue {queue}")
        report_from_child(amqp_uri, JINNIUSHAN, "金牛山街道", "2026-11", 90.0, inputs=4)
        report_from_child(amqp_uri, LAOCHENG, "老城街道", "2026-11", 80.0, inputs=2)
        table = support.wait_until(lambda: (lambda t: t if len(t["ranking"]) == 2 else None)(
            ranking(api["scoring"], "2026-11", "street")), message="both reports scored")
        assert [(r["node"], r["stale"], r["stale_reason"]) for r in table["ranking"]] == [
            (JINNIUSHAN, False, None), (LAOCHENG, False, None)]

        silent_since = datetime.now(timezone.utc) - timedelta(hours=72)
        engine = make_engine(database_url)
        try:
            with Session(engine) as session, session.begin():
                session.execute(update(ChildFreshness).where(ChildFreshness.child_node == JINNIUSHAN)
                                .values(last_heard_at=silent_since))
        finally:
            engine.dispose()
        local = silent_since.astimezone(timezone(timedelta(hours=8))).strftime("%Y-%m-%d %H:%M")
        reason = f"金牛山街道 ({JINNIUSHAN}) 自 {local} 起未上报"
        table = ranking(api["scoring"], "2026-11", "street")
        assert [(r["node"], r["stale"], r["stale_reason"]) for r in table["ranking"]] == [
            (JINNIUSHAN, True, reason), (LAOCHENG, False, None)]
        subject_id = table["ranking"][0]["subject_id"]
        explained = api["scoring"].get(f"/subjects/{subject_id}/scores/2026-11").json()
        assert (explained["stale"], explained["stale_reason"]) == (True, reason)
        history = api["scoring"].get(f"/subjects/{subject_id}/scores").json()
        assert {(s["period"], s["stale"]) for s in history["scores"]} == {
            (s["period"], True) for s in history["scores"]} and history["scores"]

        report_from_child(amqp_uri, JINNIUSHAN, "金牛山街道", "2026-11", 92.0, inputs=5, revision=2)
        table = support.wait_until(lambda: (lambda t: t if t["ranking"][0]["score"] == 92.0 else None)(
            ranking(api["scoring"], "2026-11", "street")), message="金牛山 heard again")
        assert [(r["node"], r["stale"]) for r in table["ranking"]] == [(JINNIUSHAN, False), (LAOCHENG, False)]


def test_a_city_stack_runs_the_city_scheme_end_to_end(amqp_uri, database_url, event_tap):
    """市级考评办法: 1000 points; each month 暗访 40 %, 明查 50 % (数字城管 10 % absent here, so the
    others scale up to 100 %); a quarter is the mean of its months; ranked by quarter from 3
    inspections; 优 ≥ 900, 良 ≥ 850.

    浉河: Aug 暗访 90, 明查 80 → (40×900 + 50×800)/90 = 844.444…; Sep 暗访 96, 明查 86 →
          (40×960 + 50×860)/90 = 904.444…, its routine inspection counted by no source;
          Q3 = (844.444… + 904.444…)/2 = 874.44 (良), from 4 inspections.
    平桥: Aug 暗访 96, 明查 90 → (40×960 + 50×900)/90 = 926.666…; Sep 明查 88 → 880;
          Q3 = (926.666… + 880)/2 = 903.33 (优), from 3 inspections.
    罗山: two 暗访 of 99 → 990, but 2 inspections: below the sample, not ranked."""
    tap = event_tap(("scoring.events", "score_published"), ("scoring.events", "ranking_published"))
    config, api = start_stack(amqp_uri, database_url, CITY, SCORING_POLICY="city")
    with support.running_services(config, InspectionService, ScoringService):
        inspection = api["inspection"]
        shihe, pingqiao, luoshan = (subject(inspection, node, name) for node, name in (
            (SHIHE, "浉河区"), (PINGQIAO, "平桥区"), (LUOSHAN, "罗山县")))
        for subject_id, score, day, kind in (
                (shihe, 90, "2026-08-05", "unannounced"), (shihe, 80, "2026-08-12", "announced"),
                (shihe, 96, "2026-09-03", "unannounced"), (shihe, 86, "2026-09-10", "announced"),
                (shihe, 50, "2026-09-17", "routine"),
                (pingqiao, 96, "2026-08-05", "unannounced"), (pingqiao, 90, "2026-08-12", "announced"),
                (pingqiao, 88, "2026-09-10", "announced"),
                (luoshan, 99, "2026-08-05", "unannounced"), (luoshan, 99, "2026-09-03", "unannounced")):
            inspect(inspection, subject_id, score, day, kind)

        def settled():
            table = ranking(api["scoring"], "2026-Q3", "district")
            counts = {node: r["inputs"] for node, r in rows(table).items()}
            return table if counts == {SHIHE: 4, PINGQIAO: 3, LUOSHAN: 2} else None
        table = support.wait_until(settled, timeout=30, message="the quarter scored")
        assert table["period_kind"] == "quarter" and table["peers"] == 2
        assert [(r["node"], r["score"], r["scale"], r["grade"], r["rank"]) for r in table["ranking"]] == [
            (PINGQIAO, 903.33, 1000, "优", 1), (SHIHE, 874.44, 1000, "良", 2)]
        assert {r["policy"]["policy_id"] for r in table["ranking"]} == {"city-scheme"}
        [short] = table["below_minimum_sample"]
        assert (short["node"], short["score"], short["inputs"], short["ranked"]) == (LUOSHAN, 990.0, 2, False)

        # Months are scored, not ranked, under the city scheme.
        august = rows(ranking(api["scoring"], "2026-08", "district"))
        assert (august[SHIHE]["score"], august[PINGQIAO]["score"]) == (844.44, 926.67)
        assert not any(r["ranked"] for r in august.values())

        # What the city's stack tells everyone else: the same figures, on its event exchange.
        # A subject's own figure travels in score_published (v2), the group's ranks in
        # ranking_published: the newest of each is what a parent tier holds.
        def published_q3():
            latest, ranks, versions = {}, {}, {}
            for e in tap.drain():
                p = e["payload"]
                if p["period"] != "2026-Q3":
                    continue
                if e["event_type"] == "score_published":
                    if p["subject"]["node"] in (SHIHE, PINGQIAO) and \
                            p["revision"] >= latest.get(p["subject"]["node"], {}).get("revision", 0):
                        latest[p["subject"]["node"]] = p
                else:
                    for change in p["changes"]:
                        node = change["subject"]["node"]
                        if p["version"] >= versions.get(node, 0):
                            versions[node], ranks[node] = p["version"], change["rank"]
            done = {n: (p["score"], ranks.get(n)) for n, p in latest.items()}
            return latest if done == {PINGQIAO: (903.33, 1), SHIHE: (874.44, 2)} else None
        latest = support.wait_until(published_q3, message="the quarter's scores published")
        assert {(p["scale"], p["policy"]["policy_id"], p["scoring_node"]) for p in latest.values()} == {
            (1000, "city-scheme", CITY)}
