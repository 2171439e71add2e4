"""POST /inspection-batches (issue 11): many inspections in one request, each validated and
idempotent as by POST /inspections, all recorded or none."""
from __future__ import annotations

import pytest

from tests import support
from tests.integration.test_inspection_service import counts, inspection_body, register

pytestmark = pytest.mark.integration


def test_a_batch_records_each_inspection_once_and_publishes_each(inspection_stack, event_tap):
    api = inspection_stack["api"]
    tap = event_tap(("inspection.events", "inspection_submitted"))
    subject, place = register(api)
    bodies = [inspection_body(subject, place, idempotency_key=f"phone-day-{i}") for i in range(3)]

    first = api.post("/inspection-batches", {"inspections": bodies})
    assert first.status_code == 201, first.text
    assert first.json()["created"] == 3
    assert [r["status"] for r in first.json()["results"]] == [201, 201, 201]
    ids = [r["inspection"]["inspection_id"] for r in first.json()["results"]]
    assert len(set(ids)) == 3 and all(r["inspection"]["score"] == 87.0 for r in first.json()["results"])

    # The phone retries the whole sync with one more capture: only the new one is recorded.
    again = api.post("/inspection-batches", {"inspections": bodies + [
        inspection_body(subject, place, idempotency_key="phone-day-3"), bodies[0]]})
    assert again.status_code == 201, again.text
    assert [r["status"] for r in again.json()["results"]] == [200, 200, 200, 201, 200]
    assert [r["inspection"]["inspection_id"] for r in again.json()["results"]][:3] == ids
    assert again.json()["results"][4]["inspection"]["inspection_id"] == ids[0]

    retried = api.post("/inspection-batches", {"inspections": bodies})
    assert retried.status_code == 200 and retried.json()["created"] == 0
    support.wait_until(lambda: counts(inspection_stack["database_url"]) == (4, 4), message="four inspections")
    published = {m["payload"]["inspection_id"] for m in tap.wait_for("inspection_submitted", count=4)}
    assert len(published) == 4


def test_one_refused_inspection_refuses_the_batch_naming_it(inspection_stack):
    api = inspection_stack["api"]
    subject, place = register(api)
    good = inspection_body(subject, place)
    bad = inspection_body(subject, place, results=[{"item_code": "XX-99", "findings": 1}])
    response = api.post("/inspection-batches", {"inspections": [good, good, bad]})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["inspections[2].results[0].item_code"]
    assert counts(inspection_stack["database_url"]) == (0, 0)

    unknown = api.post("/inspection-batches", {"inspections": [good, inspection_body(subject, place,
                                                                                     subject_id="nope")]})
    assert unknown.status_code == 422
    assert [e["field"] for e in unknown.json()["errors"]] == ["inspections[1].subject_id"]
    assert api.post("/inspection-batches", {"inspections": []}).status_code == 422
    assert counts(inspection_stack["database_url"]) == (0, 0)


def test_a_batch_takes_the_access_a_single_submission_takes(inspection_stack):
    api = inspection_stack["api"]
    subject, place = register(api)
    body = {"inspections": [inspection_body(subject, place)]}
    assert api.anonymous().post("/inspection-batches", body).status_code == 401
    viewer = api.as_user("viewer", [("viewer", "411502008000")])
    assert viewer.post("/inspection-batches", body).status_code == 403
    elsewhere = api.as_user("elsewhere", [("inspector", "411502001000")])  # another street's inspector
    refused = elsewhere.post("/inspection-batches", body)
    assert refused.status_code == 403, refused.text
    assert refused.json()["errors"][0]["field"] == "inspections[0].subject_id"
    assert counts(inspection_stack["database_url"]) == (0, 0)
