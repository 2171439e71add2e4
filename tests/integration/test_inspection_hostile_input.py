"""Hostile input to the inspection service (issue 9): every payload gets a 4xx naming the
field and the reason, and stores nothing. Over HTTP against the running service, a real
PostgreSQL and a real RabbitMQ."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tests import support
from tests.integration.test_inspection_service import inspection_body, register

pytestmark = pytest.mark.integration

COMMUNITY = "411502008001"


def stored(database_url) -> tuple:
    return tuple(support.scalar(database_url, f"SELECT count(*) FROM {table}") for table in
                 ("inspection_subjects", "inspection_places", "inspection_inspections",
                  "inspection_item_results", "inspection_outbox"))


def refused(response, status: int | tuple, field: str) -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text)
    errors = response.json()["errors"]
    assert any(e["field"] == field for e in errors), errors
    assert all(e["reason"] for e in errors), errors


def now_plus(**delta) -> str:
    return (datetime.now(timezone.utc) + timedelta(**delta)).isoformat()


def with_result(**fields):
    return lambda s, p: inspection_body(s, p, results=[{"item_code": "PT-02", "findings": 1, **fields}])


BODIES = [
    ("year 0001", lambda s, p: inspection_body(s, p, inspected_at="0001-01-01T00:00:00+00:00"), "inspected_at"),
    ("dated 1970", lambda s, p: inspection_body(s, p, inspected_at="1970-01-01T08:00:00+08:00"), "inspected_at"),
    ("year 9999", lambda s, p: inspection_body(s, p, inspected_at="9999-12-31T23:59:59+00:00"), "inspected_at"),
    ("two days ahead", lambda s, p: inspection_body(s, p, inspected_at=now_plus(days=2)), "inspected_at"),
    ("no time zone", lambda s, p: inspection_body(s, p, inspected_at="2026-11-20T09:30:00"), "inspected_at"),
    ("not a date", lambda s, p: inspection_body(s, p, inspected_at="yesterday"), "inspected_at"),
    ("deadline in 9999", with_result(deadline_at="9999-01-01T00:00:00+00:00"), "results[0].deadline_at"),
    ("photo taken in year 1", with_result(evidence=[{"uri": "p.jpg", "sha256": "a" * 64,
                                                      "taken_at": "0001-01-01T00:00:00+00:00"}]),
     "results[0].evidence[0].taken_at"),
    ("deduction of a million", with_result(deduction=1e6), "results[0].deduction"),
    ("line break in an inspector's name", lambda s, p: inspection_body(s, p, inspectors=["王芳\r\nBcc: x@y"]),
     "inspectors[0]"),
    ("subject id of odd characters", lambda s, p: inspection_body(s, p, subject_id="../../etc/passwd\u202e"),
     "subject_id"),
    ("subject id far too long", lambda s, p: inspection_body(s, p, subject_id="x" * 5000), "subject_id"),
    ("place id of another alphabet", lambda s, p: inspection_body(s, p, place_id="公厕①"), "place_id"),
    ("idempotency key too long", lambda s, p: inspection_body(s, p, idempotency_key="k" * 129), "idempotency_key"),
    ("a boolean for a number", with_result(findings=False), "results[0].findings"),
    ("a number for a boolean", lambda s, p: inspection_body(s, p, submit=0), "submit"),
]


@pytest.mark.parametrize("case,make_body,field", BODIES, ids=[c[0] for c in BODIES])
def test_hostile_inspection_bodies_are_refused_and_store_nothing(inspection_stack, case, make_body, field):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    subject, place = register(api)
    before = stored(database_url)
    refused(api.post("/inspections", make_body(subject, place)), 422, field)
    assert stored(database_url) == before


RAW_NUMBERS = [
    ("NaN deduction", '"results": [{"item_code": "PT-02", "findings": 1, "deduction": NaN}]', "results[0].deduction"),
    ("infinite deduction", '"results": [{"item_code": "PT-02", "findings": 1, "deduction": Infinity}]',
     "results[0].deduction"),
    ("NaN latitude", '"results": [{"item_code": "PT-02", "findings": 1, "gps": {"lat": NaN, "lng": 114}}]',
     "results[0].gps.lat"),
]


@pytest.mark.parametrize("case,fragment,field", RAW_NUMBERS, ids=[c[0] for c in RAW_NUMBERS])
def test_non_numbers_in_json_are_refused(inspection_stack, case, fragment, field):
    """Python's JSON reader takes NaN and Infinity; a score made of them would poison every read."""
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    subject, place = register(api)
    body = {k: v for k, v in inspection_body(subject, place).items() if k != "results"}
    raw = json.dumps(body, ensure_ascii=False)[:-1] + ", " + fragment + "}"
    before = stored(database_url)
    response = api.request("POST", "/inspections", data=raw.encode(), headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["errors"] and all(e["field"] and e["reason"] for e in response.json()["errors"])
    assert stored(database_url) == before


QUERIES = [
    ("/inspections", {"since": "9999-12-31T00:00:00+00:00"}, "query.since"),
    ("/inspections", {"until": "0001-01-01T00:00:00+00:00"}, "query.until"),
    ("/inspections", {"since": "2026-11-01T00:00:00"}, "query.since"),
    ("/inspections", {"since": "not-a-date"}, "query.since"),
    ("/inspections", {"offset": str(2 ** 63)}, "query.offset"),
    ("/inspections", {"offset": "1000001"}, "query.offset"),
    ("/inspections", {"offset": "-1"}, "query.offset"),
    ("/inspections", {"limit": "0"}, "query.limit"),
    ("/inspections", {"limit": "100000"}, "query.limit"),
    ("/inspections", {"subject_id": "x" * 500}, "query.subject_id"),
    ("/inspections", {"node": "41150200800X"}, "query.node"),
    ("/inspections", {"kind": "surprise"}, "query.kind"),
    ("/inspections", {"unknown": "1"}, "query.unknown"),
    ("/subjects", {"offset": str(2 ** 63)}, "query.offset"),
    ("/subjects", {"limit": "5001"}, "query.limit"),
    ("/places", {"offset": str(2 ** 63)}, "query.offset"),
    ("/places", {"node": "9"}, "query.node"),
    ("/places", {"node": "990000000000"}, "query.node"),
]


def test_hostile_queries_are_refused(inspection_stack):
    api = inspection_stack["api"]
    for path, params, field in QUERIES:
        # A well-formed node outside the caller's reach is forbidden rather than malformed.
        refused(api.get(path, params=params), 403 if params.get("node") == "990000000000" else 422, field)
    # The bounds themselves are fine.
    assert api.get("/inspections", params={"offset": "1000000", "since": "2000-01-01T00:00:00+08:00",
                                           "until": "2099-12-31T00:00:00+08:00"}).status_code == 200


ODD_IDS = ["no-such-id", "周家山社区", "a" * 3000, "'; DROP TABLE inspection_subjects; --", "%E2%80%AE", "..",
           "😀" * 40]


def test_odd_ids_in_paths_are_not_found(inspection_stack):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    subject, place = register(api)
    body = inspection_body(subject, place, submit=False)
    before = stored(database_url)
    for odd in ODD_IDS:
        for method, path, payload in (("GET", f"/inspections/{odd}", None), ("PUT", f"/inspections/{odd}", body),
                                      ("POST", f"/inspections/{odd}/submit", None),
                                      ("POST", f"/inspections/{odd}/release", None),
                                      ("GET", f"/subjects/{odd}", None), ("GET", f"/places/{odd}", None)):
            response = api.request(method, path, json_body=payload)
            assert response.status_code == 404, (method, path[:60], response.status_code, response.text)
            assert response.json()["error"] == "not_found"
    # A NUL in a path is refused by name before any lookup.
    assert api.get("/inspections/abc%00def").status_code == 400
    assert stored(database_url) == before


def test_a_duplicate_subject_is_a_conflict_not_a_crash(inspection_stack):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    first = {"subject_type": "child_unit", "node": COMMUNITY, "name": "周家山社区"}
    assert api.post("/subjects", first).status_code == 201
    refused(api.post("/subjects", first), 409, "name")
    refused(api.post("/subjects", {**first, "name": "  周家山社区  "}), 409, "name")
    assert support.scalar(database_url, "SELECT count(*) FROM inspection_subjects") == 1


REGISTRY = [
    ("/subjects", {"subject_type": "child_unit", "node": COMMUNITY, "name": "周家山\n社区"}, "name"),
    ("/subjects", {"subject_type": "child_unit", "node": COMMUNITY, "name": "   "}, "name"),
    ("/subjects", {"subject_type": "child_unit", "node": COMMUNITY, "name": "周家山社区",
                   "contacts": ["ops@example.com\r\nBcc: all@example.com"]}, "contacts[0]"),
    ("/subjects", {"subject_type": "child_unit", "node": COMMUNITY, "name": "x" * 201}, "name"),
    ("/subjects", {"subject_type": "child_unit", "node": "0" * 12, "name": "无省"}, "node"),
    ("/places", {"place_type": "public_toilet", "node": COMMUNITY, "name": "公厕", "address": "周家山路\n12号"},
     "address"),
    ("/places", {"place_type": "public_toilet", "node": COMMUNITY, "name": "公厕",
                 "responsible_subject_id": "no-such-subject"}, "responsible_subject_id"),
    ("/places", {"place_type": "public_toilet", "node": COMMUNITY, "name": "公厕",
                 "responsible_subject_id": "y" * 65}, "responsible_subject_id"),
    ("/places", {"place_type": "public_toilet", "node": COMMUNITY, "name": "公厕",
                 "gps": {"lat": 91, "lng": 0}}, "gps.lat"),
]


def test_hostile_registry_bodies_are_refused(inspection_stack):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    for path, body, field in REGISTRY:
        refused(api.post(path, body), 422, field)
    assert stored(database_url) == (0, 0, 0, 0, 0)


def test_an_idempotency_key_header_gets_the_bodys_bounds(inspection_stack):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    subject, place = register(api)
    before = stored(database_url)
    refused(api.post("/inspections", inspection_body(subject, place), headers={"Idempotency-Key": "k" * 300}),
            422, "Idempotency-Key")
    assert stored(database_url) == before
    ok = api.post("/inspections", inspection_body(subject, place), headers={"Idempotency-Key": "phone-1"})
    assert ok.status_code == 201 and ok.json()["idempotency_key"] == "phone-1"


def test_someone_elses_idempotency_key_reveals_nothing(inspection_stack):
    """A retry key is the phone's own: another office reusing it learns nothing of the inspection
    (issue 27: keys are scoped to the caller, so it simply records the other office's own)."""
    api = inspection_stack["api"]
    subject, place = register(api)
    secret = api.post("/inspections", inspection_body(subject, place, kind="unannounced", note="暗访",
                                                      idempotency_key="phone-7f3a-001"))
    assert secret.status_code == 201
    other = api.post("/subjects", {"subject_type": "child_unit", "node": "411502008002", "name": "南湾社区"}).json()
    neighbour = api.as_user("李强", [("inspector", "411502008002")])
    reused = neighbour.post("/inspections", inspection_body(
        other, place, place_id=None, idempotency_key="phone-7f3a-001",
        checklist={"version": "2010.1", "code": "national-ten-areas"}, results=[]))
    assert reused.status_code == 201, reused.text  # its own inspection, not the first one back
    assert secret.json()["inspection_id"] not in reused.text and "暗访" not in reused.text
    assert reused.json()["subject_id"] == other["subject_id"]
