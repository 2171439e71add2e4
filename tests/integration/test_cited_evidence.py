"""Cited photos are checked (issue 27, finding 4): an inspection's findings and a task's
actions may cite only photos that exist and are the caller's to cite — uploaded by the caller,
or already shown on that same inspection or task. Inspection, tasks and photos run as in a
stack; tasks and inspection ask photos (`GET /photos/<sha256>/meta`) with the caller's token."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from services.inspection.service import InspectionService
from services.photos.service import PhotosService
from services.tasks.service import TasksService
from tests import support
from tests.unit.photos.test_photo_domain import jpeg

pytestmark = pytest.mark.integration

STREET = "411502008000"      # 金牛山街道
ZHOUJIASHAN = "411502008001"  # 周家山社区
XIANGTANG = "411502008006"   # 飨堂社区
NEVER_UPLOADED = "c" * 64


@pytest.fixture
def stack(amqp_uri, database_url, tmp_path):
    ports = {"inspection": support.free_port(), "tasks": support.free_port(), "photos": support.free_port()}
    config = support.base_config(amqp_uri, database_url, PHOTOS_DIR=str(tmp_path / "photos"),
                                 WEB_ADDRESSES={k: f"127.0.0.1:{p}" for k, p in ports.items()},
                                 TASKS_SWEEP_INTERVAL=0, EVIDENCE_CHECK=True)
    with support.running_services(config, InspectionService, TasksService, PhotosService):
        yield {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}


def client(url: str, name: str, role: str, node: str, subject: str) -> support.ApiClient:
    return support.ApiClient(url).as_user(name, [(role, node)], subject=subject)


def upload(url: str, who: support.ApiClient, data: bytes) -> dict:
    response = who.session.post(f"{url}/photos", data=data, headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert response.status_code in (200, 201), response.text
    return {"uri": response.json()["uri"], "sha256": response.json()["sha256"]}


def fields(response) -> list[str]:
    return [e["field"] for e in response.json().get("errors", [])]


def place_of(admin: support.ApiClient, node: str, name: str) -> tuple[dict, dict]:
    subject = admin.post("/subjects", {"subject_type": "child_unit", "node": node, "name": name}).json()
    place = admin.post("/places", {"place_type": "public_toilet", "name": f"{name}公厕", "node": node,
                                   "responsible_subject_id": subject["subject_id"]}).json()
    return subject, place


def body(subject: dict, place: dict, photo: dict) -> dict:
    return {"kind": "routine", "subject_id": subject["subject_id"], "place_id": place["place_id"],
            "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳"],
            "inspected_at": (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(),
            "results": [{"item_code": "PT-02", "findings": 2, "note": "便池有积粪", "evidence": [photo]}]}


def test_a_rectifier_cannot_cite_another_communitys_photo_or_one_never_uploaded(stack):
    admin = support.ApiClient(stack["inspection"])
    inspector = client(stack["inspection"], "王芳", "inspector", STREET, "wangfang")
    inspector_photos = client(stack["photos"], "王芳", "inspector", STREET, "wangfang")
    zhou, zhou_place = place_of(admin, ZHOUJIASHAN, "周家山社区")
    xiang, xiang_place = place_of(admin, XIANGTANG, "飨堂社区")
    zhou_before = upload(stack["photos"], inspector_photos, jpeg(size=(64, 48)))
    xiang_before = upload(stack["photos"], inspector_photos, jpeg(size=(66, 48)))

    # An inspection may not cite a photo nobody uploaded, nor one someone else uploaded.
    refused = inspector.post("/inspections", body(zhou, zhou_place, {"uri": "photos/x", "sha256": NEVER_UPLOADED}))
    assert refused.status_code == 422 and fields(refused) == ["results[0].evidence[0].sha256"], refused.text
    assert refused.json()["errors"][0]["reason"].startswith("照片不存在或无权引用")
    colleague = client(stack["inspection"], "李强", "inspector", STREET, "liqiang")
    refused = colleague.post("/inspections", body(zhou, zhou_place, zhou_before))
    assert refused.status_code == 422 and fields(refused) == ["results[0].evidence[0].sha256"], refused.text
    batch = colleague.post("/inspection-batches", {"inspections": [body(zhou, zhou_place, zhou_before)]})
    assert batch.status_code == 422 and fields(batch) == ["inspections[0].results[0].evidence[0].sha256"], batch.text
    for subject, place, photo in ((zhou, zhou_place, zhou_before), (xiang, xiang_place, xiang_before)):
        recorded = inspector.post("/inspections", dict(body(subject, place, photo), submit=True))
        assert recorded.status_code == 201, recorded.text

    tasks = support.ApiClient(stack["tasks"])
    found = support.wait_until(lambda: (lambda ts: ts if len(ts) == 2 else None)(tasks.get("/tasks").json()),
                               message="two tasks opened")
    task = next(t for t in found if t["subject_node"] == ZHOUJIASHAN)
    task_id = task["task_id"]
    rectifier = client(stack["tasks"], "张伟", "rectifier", ZHOUJIASHAN, "zhangwei")
    rectifier_photos = client(stack["photos"], "张伟", "rectifier", ZHOUJIASHAN, "zhangwei")
    started = rectifier.post(f"/tasks/{task_id}/start", {"note": "已安排保洁员"})
    assert started.status_code == 200, started.text

    # 飨堂's photo and a sha256 never uploaded are refused as 周家山's fix; nothing changes.
    for photo in (xiang_before, {"uri": "photos/x", "sha256": NEVER_UPLOADED}):
        refused = rectifier.post(f"/tasks/{task_id}/fix", {"note": "已清理", "after_photos": [photo]})
        assert refused.status_code == 422 and fields(refused) == ["after_photos[0].sha256"], refused.text
    assert tasks.get(f"/tasks/{task_id}").json()["status"] == "in_progress"
    # So 飨堂's photo is never served under 周家山's task.
    assert rectifier_photos.get(f"/photos/{xiang_before['sha256']}",
                                params={"task_id": task_id}).status_code == 404

    # Its own upload, and the before-photo already on this task, are accepted.
    after = upload(stack["photos"], rectifier_photos, jpeg(size=(68, 48)))
    fixed = rectifier.post(f"/tasks/{task_id}/fix", {"note": "已清理", "after_photos": [after, zhou_before]})
    assert fixed.status_code == 200, fixed.text

    # The inspecting side's evidence is checked alike.
    reviewer = client(stack["tasks"], "李强", "inspector", STREET, "liqiang")
    refused = reviewer.post(f"/tasks/{task_id}/reject", {"reason": "未整改到位", "evidence": [xiang_before]})
    assert refused.status_code == 422 and fields(refused) == ["evidence[0].sha256"], refused.text
    rejected = reviewer.post(f"/tasks/{task_id}/reject", {"reason": "未整改到位", "evidence": [after]})
    assert rejected.status_code == 200, rejected.text


def test_photo_meta_answers_only_who_may_cite_the_photo(stack):
    uploader = client(stack["photos"], "王芳", "inspector", STREET, "wangfang")
    data = jpeg(size=(70, 48))
    photo = upload(stack["photos"], uploader, data)
    meta = uploader.get(f"/photos/{photo['sha256']}/meta")
    assert meta.status_code == 200 and meta.json()["sha256"] == hashlib.sha256(data).hexdigest()
    stranger = client(stack["photos"], "李强", "inspector", STREET, "liqiang")
    assert stranger.get(f"/photos/{photo['sha256']}/meta").status_code == 404
    assert uploader.get(f"/photos/{NEVER_UPLOADED}/meta").status_code == 404


def test_a_draft_may_keep_the_photos_it_already_shows_but_not_take_anothers(stack):
    admin = support.ApiClient(stack["inspection"])
    wang = client(stack["inspection"], "王芳", "inspector", STREET, "wangfang")
    wang_photos = client(stack["photos"], "王芳", "inspector", STREET, "wangfang")
    zhou, zhou_place = place_of(admin, ZHOUJIASHAN, "周家山社区")
    shown = upload(stack["photos"], wang_photos, jpeg(size=(72, 48)))
    other = upload(stack["photos"], wang_photos, jpeg(size=(74, 48)))
    draft = wang.post("/inspections", dict(body(zhou, zhou_place, shown), submit=False))
    assert draft.status_code == 201, draft.text
    draft_id = draft.json()["inspection_id"]

    # A colleague completes the draft: the photo it already shows may stay, another's may not come in.
    li = client(stack["inspection"], "李强", "inspector", STREET, "liqiang")
    refused = li.put(f"/inspections/{draft_id}", dict(body(zhou, zhou_place, other), submit=False))
    assert refused.status_code == 422 and fields(refused) == ["results[0].evidence[0].sha256"], refused.text
    kept = li.put(f"/inspections/{draft_id}", dict(body(zhou, zhou_place, shown), submit=True))
    assert kept.status_code == 200, kept.text
    assert kept.json()["status"] == "submitted"
