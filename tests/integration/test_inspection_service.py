"""The inspection service over real HTTP, a real PostgreSQL database and a real RabbitMQ."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, func, select

from services.contracts.events import parse_event
from services.contracts.events.inspection import InspectionSubmitted
from services.inspection.models import Inspection, outbox
from services.plumbing.idempotency import KEY_IN_FLIGHT
from tests import support

pytestmark = pytest.mark.integration

STREET = "411502008000"       # 金牛山街道
COMMUNITY = "411502008001"    # 周家山社区
OTHER_DISTRICT_COMMUNITY = "411503001001"


def iso(dt: datetime) -> str:
    return dt.isoformat()


def register(api):
    subject = api.post("/subjects", {"subject_type": "child_unit", "node": COMMUNITY, "name": "周家山社区"})
    assert subject.status_code == 201, subject.text
    subject = subject.json()
    place = api.post("/places", {"place_type": "public_toilet", "name": "周家山路公厕", "node": COMMUNITY,
                                 "address": "周家山路12号", "gps": {"lat": 32.12, "lng": 114.05},
                                 "responsible_subject_id": subject["subject_id"]})
    assert place.status_code == 201, place.text
    return subject, place.json()


def inspection_body(subject, place, **overrides):
    body = {
        "kind": "routine", "subject_id": subject["subject_id"], "place_id": place["place_id"],
        "checklist": {"version": "2010.1", "code": "public-toilet"},
        "inspectors": ["王芳", "李强"],
        "inspected_at": iso(datetime.now(timezone.utc) - timedelta(hours=1)),
        "results": [
            {"item_code": "PT-02", "findings": 2, "note": "便池有积粪",
             "evidence": [{"uri": "photos/pt-02.jpg", "sha256": "a" * 64}]},
            {"item_code": "PT-03", "findings": 1, "deduction": 3},
            {"item_code": "PT-01", "findings": 0},
        ],
    }
    body.update(overrides)
    return body


def counts(database_url):
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return (conn.execute(select(func.count()).select_from(Inspection.__table__)).scalar_one(),
                    conn.execute(select(func.count()).select_from(outbox)).scalar_one())
    finally:
        engine.dispose()


def test_submitted_inspection_is_scored_and_published(inspection_stack, event_tap):
    api = inspection_stack["api"]
    tap = event_tap(("inspection.events", "inspection_submitted"))
    subject, place = register(api)

    response = api.post("/inspections", inspection_body(subject, place))
    assert response.status_code == 201, response.text
    inspection = response.json()
    # PT-02: 2 findings × 5 = 10; PT-03: explicit 3 → 100 - 13 on a 100-point checklist.
    assert inspection["status"] == "submitted"
    assert inspection["score"] == 87.0
    assert inspection["points_deducted"] == 13.0

    [message] = tap.wait_for("inspection_submitted")
    envelope, payload = parse_event(message, "inspection_submitted")
    assert isinstance(payload, InspectionSubmitted)
    assert envelope.producer.node == STREET and envelope.producer.service == "inspection"
    assert str(payload.inspection_id) == inspection["inspection_id"]
    assert payload.score == 87.0
    assert payload.subject.node == COMMUNITY
    assert payload.place.responsible_subject_id == subject["subject_id"]
    assert sorted(f.item_code for f in payload.findings) == ["PT-02", "PT-03"]  # PT-01 had no finding
    pt02 = next(f for f in payload.findings if f.item_code == "PT-02")
    assert pt02.deadline_hours == 0 and pt02.evidence[0].sha256 == "a" * 64

    stored = api.get(f"/inspections/{inspection['inspection_id']}").json()
    assert stored["score"] == 87.0 and len(stored["results"]) == 3


def test_retried_submission_returns_the_same_inspection_and_publishes_once(inspection_stack, event_tap):
    api = inspection_stack["api"]
    tap = event_tap(("inspection.events", "#"))
    subject, place = register(api)
    body = inspection_body(subject, place, idempotency_key="phone-7f3a-001")

    first = api.post("/inspections", body)
    second = api.post("/inspections", body)
    third = api.post("/inspections", {k: v for k, v in body.items() if k != "idempotency_key"},
                     headers={"Idempotency-Key": "phone-7f3a-001"})
    assert first.status_code == 201 and second.status_code == 200 and third.status_code == 200
    assert first.json()["inspection_id"] == second.json()["inspection_id"] == third.json()["inspection_id"]
    tap.wait_for("inspection_submitted")
    support.wait_until(lambda: counts(inspection_stack["database_url"])[1] == 1, message="one outbox row")
    assert len([e for e in tap.drain() if e["event_type"] == "inspection_submitted"]) == 1
    assert counts(inspection_stack["database_url"]) == (1, 1)


def test_idempotency_keys_are_the_callers_own_and_a_reused_key_needs_the_same_body(inspection_stack):
    """Issue 27: a second inspector posting an existing Idempotency-Key got 200 and the first
    inspector's inspection back, and nothing was stored. Keys are scoped to the caller and
    the endpoint (POST /inspections and its batches alike)."""
    api = inspection_stack["api"]
    subject, place = register(api)
    wang = api.as_user("王芳", [("inspector", STREET)], subject="wangfang")
    li = api.as_user("李强", [("inspector", STREET)], subject="liqiang")
    mine = inspection_body(subject, place)
    theirs = inspection_body(subject, place, inspectors=["李强"], note="复查")

    first = wang.post("/inspections", mine, headers={"Idempotency-Key": "phone-0001"})
    assert first.status_code == 201, first.text
    # Another inspector's request under the same key is theirs, stored as theirs.
    second = li.post("/inspections", theirs, headers={"Idempotency-Key": "phone-0001"})
    assert second.status_code == 201, second.text
    assert second.json()["inspection_id"] != first.json()["inspection_id"]
    assert second.json()["inspectors"] == ["李强"]
    # The same person's retry gets the stored inspection; the same key with another body is refused.
    retry = wang.post("/inspections", mine, headers={"Idempotency-Key": "phone-0001"})
    assert retry.status_code == 200 and retry.json()["inspection_id"] == first.json()["inspection_id"]
    changed = wang.post("/inspections", {**mine, "inspectors": ["王芳"]}, headers={"Idempotency-Key": "phone-0001"})
    assert changed.status_code == 409, changed.text
    [error] = changed.json()["errors"]
    assert error["field"] == "Idempotency-Key" and error["reason"].startswith("该幂等键（Idempotency-Key）")
    assert counts(inspection_stack["database_url"])[0] == 2

    # Batches: the same keys, the same scope.
    replayed = wang.post("/inspection-batches", {"inspections": [{**mine, "idempotency_key": "phone-0001"}]})
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["results"][0]["inspection"]["inspection_id"] == first.json()["inspection_id"]
    refused = wang.post("/inspection-batches", {"inspections": [{**theirs, "idempotency_key": "phone-0001"}]})
    assert refused.status_code == 409, refused.text
    assert refused.json()["errors"][0]["field"] == "inspections[0].idempotency_key"
    own = api.as_user("赵敏", [("inspector", STREET)], subject="zhaomin").post(
        "/inspection-batches", {"inspections": [{**mine, "idempotency_key": "phone-0001"}]})
    assert own.status_code == 201, own.text
    assert own.json()["results"][0]["inspection"]["inspection_id"] not in (
        first.json()["inspection_id"], second.json()["inspection_id"])
    assert counts(inspection_stack["database_url"])[0] == 3


def test_concurrent_submissions_with_one_idempotency_key_make_one_row_and_one_event(inspection_stack, event_tap):
    """Ten phones' retries of one offline capture arrive at once (green threads, each with its
    own connection, against real PostgreSQL): one inspection, one event, every answer naming it."""
    import eventlet
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    tap = event_tap(("inspection.events", "inspection_submitted"))
    subject, place = register(api)
    body = inspection_body(subject, place, idempotency_key="phone-race-001")
    start = eventlet.Event()

    def submit(_):
        client = support.ApiClient(api.base_url)  # its own connection: really concurrent
        start.wait()
        answers = [client.post("/inspections", body)]
        # The loser of a race past the lookup is told to retry (409), and a retry finds the winner.
        while answers[-1].status_code == 409:
            assert answers[-1].json()["errors"] == [{"field": "idempotency_key", "reason": KEY_IN_FLIGHT}]
            answers.append(client.post("/inspections", body))
        return answers
    pool = eventlet.GreenPool(10)
    running = [pool.spawn(submit, n) for n in range(10)]
    eventlet.sleep(0)
    start.send()
    finals = [gt.wait()[-1] for gt in running]

    assert sorted(r.status_code for r in finals) == [200] * 9 + [201], [r.text for r in finals]
    assert len({r.json()["inspection_id"] for r in finals}) == 1
    assert counts(database_url) == (1, 1)  # one inspection row, one outbox row: written together
    # A later inspection's event as the marker: a second event for the raced one would come first.
    marker = api.post("/inspections", inspection_body(subject, place, idempotency_key="phone-race-002"))
    assert marker.status_code == 201, marker.text
    events = tap.wait_for("inspection_submitted", 2)
    assert [e["payload"]["inspection_id"] for e in events] == [finals[0].json()["inspection_id"],
                                                                marker.json()["inspection_id"]]


BAD_INPUTS = [
    ("unknown subject", lambda s, p: inspection_body(s, p, subject_id="no-such-subject"), 422, "subject_id"),
    ("unknown item", lambda s, p: inspection_body(s, p, results=[{"item_code": "XX-99", "findings": 1}]),
     422, "results[0].item_code"),
    ("deduction above cap", lambda s, p: inspection_body(s, p, results=[{"item_code": "PT-02", "findings": 1,
                                                                         "deduction": 21}]),
     422, "results[0].deduction"),
    ("more than a day ahead", lambda s, p: inspection_body(
        s, p, inspected_at=iso(datetime.now(timezone.utc) + timedelta(hours=25))), 422, "inspected_at"),
    ("negative findings", lambda s, p: inspection_body(s, p, results=[{"item_code": "PT-02", "findings": -1}]),
     422, "results[0].findings"),
    ("unknown checklist", lambda s, p: inspection_body(s, p, checklist={"version": "2010.1", "code": "nope"}),
     422, "checklist.code"),
    ("unknown version", lambda s, p: inspection_body(s, p, checklist={"version": "1999", "code": "public-toilet"}),
     422, "checklist.version"),
    ("checklist for another place type", lambda s, p: inspection_body(
        s, p, checklist={"version": "2010.1", "code": "river"}, results=[]), 422, "checklist.code"),
    ("unknown field", lambda s, p: {**inspection_body(s, p), "scorez": 100}, 422, "scorez"),
    ("duplicate item", lambda s, p: inspection_body(s, p, results=[{"item_code": "PT-02", "findings": 1},
                                                                   {"item_code": "PT-02", "findings": 1}]),
     422, "body"),
]


@pytest.mark.parametrize("case,make_body,status,field", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_with_the_field_and_stores_nothing(inspection_stack, case, make_body, status, field):
    api = inspection_stack["api"]
    subject, place = register(api)
    response = api.post("/inspections", make_body(subject, place))
    assert response.status_code == status, response.text
    error = response.json()
    assert error["errors"], error
    assert any(e["field"] == field for e in error["errors"]), error
    assert all(e["reason"] for e in error["errors"])
    assert counts(inspection_stack["database_url"]) == (0, 0)


def test_unknown_paths_and_methods_get_json_errors(inspection_stack):
    api = inspection_stack["api"]
    missing = api.get("/no-such-thing")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong_method = api.request("DELETE", "/inspections")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "http_error"
    assert "POST" in wrong_method.headers["Allow"]


def test_malformed_and_oversize_bodies(inspection_stack):
    api = inspection_stack["api"]
    malformed = api.request("POST", "/inspections", data=b'{"kind": "routine",',
                            headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json()["error"] == "malformed_json"
    oversize = api.request("POST", "/inspections", data=b'{"note": "' + b"x" * 300_000 + b'"}',
                           headers={"Content-Type": "application/json"})
    assert oversize.status_code == 413
    assert oversize.json()["errors"][0]["field"] == "body"
    assert counts(inspection_stack["database_url"]) == (0, 0)


def test_registry_refuses_nodes_outside_the_jurisdiction(inspection_stack):
    api = inspection_stack["api"]
    outside = api.post("/subjects", {"subject_type": "child_unit", "node": OTHER_DISTRICT_COMMUNITY, "name": "外区社区"})
    assert outside.status_code == 422
    assert outside.json()["errors"][0]["field"] == "node"
    malformed = api.post("/subjects", {"subject_type": "child_unit", "node": "41150200800X", "name": "坏代码"})
    assert malformed.status_code == 422 and malformed.json()["errors"][0]["field"] == "node"
    unknown = api.post("/subjects", {"subject_type": "child_unit", "node": "411502008999", "name": "不存在"})
    assert unknown.status_code == 422 and "not a known division code" in unknown.json()["errors"][0]["reason"]
    assert api.get("/subjects").json() == []


def test_draft_then_submit(inspection_stack, event_tap):
    api = inspection_stack["api"]
    tap = event_tap(("inspection.events", "inspection_submitted"))
    subject, place = register(api)
    draft = api.post("/inspections", inspection_body(subject, place, submit=False))
    assert draft.status_code == 201 and draft.json()["status"] == "draft" and draft.json()["score"] is None
    draft_id = draft.json()["inspection_id"]
    edited = api.put(f"/inspections/{draft_id}", inspection_body(
        subject, place, submit=False, results=[{"item_code": "PT-05", "findings": 1}]))
    assert edited.status_code == 200, edited.text
    submitted = api.post(f"/inspections/{draft_id}/submit")
    assert submitted.status_code == 200, submitted.text
    assert submitted.json()["status"] == "submitted"
    [event] = tap.wait_for("inspection_submitted")
    assert [f["item_code"] for f in event["payload"]["findings"]] == ["PT-05"]
    again = api.post(f"/inspections/{draft_id}/submit")
    assert again.status_code == 409
    assert api.get("/inspections/does-not-exist").status_code == 404


def test_event_committed_before_a_crash_is_published_on_restart(amqp_uri, database_url, event_tap):
    """A row committed with its outbox event but never relayed (the process died) is sent later."""
    from services.contracts.checklists import default_catalogue
    from services.contracts.events import Producer
    from services.inspection import operations as ops
    from services.inspection.schemas import InspectionIn, SubjectCreate
    from services.inspection.service import InspectionService
    from services.plumbing.db import make_engine, run_migrations
    from services.plumbing.outbox import WorkerOutbox, event_exchange_name
    from sqlalchemy.orm import Session

    engine = make_engine(database_url)
    from services.inspection.service import MIGRATIONS
    run_migrations(engine, MIGRATIONS, "alembic_version_inspection")

    class NoRelayProvider:  # what a crashed process leaves behind: committed rows, no relay
        table = outbox
        exchange_name = event_exchange_name("inspection")

    from services.contracts.identity import ROLES, Grant, Principal
    office = Principal(subject="u-1", name="王芳", grants=tuple(Grant(role, STREET) for role in ROLES))
    jurisdiction = ops.Jurisdiction(STREET)
    with Session(engine) as session, session.begin():
        subject = ops.register_subject(session, SubjectCreate(subject_type="child_unit", node=COMMUNITY,
                                                              name="周家山社区"), jurisdiction, office)
        data = InspectionIn(kind="unannounced", subject_id=subject.subject_id,
                            checklist={"version": "2010.1", "code": "national-ten-areas"}, inspectors=["暗访组"],
                            inspected_at=datetime.now(timezone.utc), results=[])
        inspection, _ = ops.record_inspection(session, data, default_catalogue(), jurisdiction,
                                              WorkerOutbox(NoRelayProvider(), Producer(node=STREET, service="inspection")),
                                              100, office)
    engine.dispose()
    tap = event_tap(("inspection.events", "inspection_submitted"))
    assert tap.drain() == []

    port = support.free_port()
    config = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={"inspection": f"127.0.0.1:{port}"})
    with support.running_services(config, InspectionService):
        [event] = tap.wait_for("inspection_submitted")
    assert event["payload"]["inspection_id"] == inspection.inspection_id
    assert event["payload"]["kind"] == "unannounced" and event["payload"]["score"] == 100.0


def test_a_separate_process_consumes_the_event(inspection_stack):
    api = inspection_stack["api"]
    env = dict(os.environ, AMQP_URI=inspection_stack["amqp_uri"])
    proc = subprocess.Popen([sys.executable, "-m", "services.tools.tail_events", "--exchange", "inspection.events",
                             "--count", "1", "--timeout", "30"], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=support.ROOT)
    try:
        assert json.loads(proc.stdout.readline())["ready"] is True
        subject, place = register(api)
        inspection = api.post("/inspections", inspection_body(subject, place)).json()
        line = proc.stdout.readline()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    event = json.loads(line)
    assert event["event_type"] == "inspection_submitted"
    assert event["payload"]["inspection_id"] == inspection["inspection_id"]


def test_health_metrics_and_openapi(inspection_stack):
    api = inspection_stack["api"]
    subject, place = register(api)
    assert api.post("/inspections", inspection_body(subject, place)).status_code == 201
    health = api.get("/health")
    assert health.status_code == 200 and health.json()["checks"]["database:inspection"] == "ok"
    metrics = api.get("/metrics").text
    assert 'chuangwei_inspections_submitted_total{kind="routine"}' in metrics
    assert "chuangwei_inspection_score_bucket" in metrics
    assert "chuangwei_http_request_seconds_bucket" in metrics
    assert "chuangwei_outbox_backlog" in metrics
    spec = api.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    post = spec["paths"]["/inspections"]["post"]
    schema_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert "王芳" in json.dumps(schema["examples"], ensure_ascii=False)
    assert "/inspections/{inspection_id}" in spec["paths"]
