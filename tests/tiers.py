"""The four-tier chain of the system tests and the benchmarks (信阳市 → 浉河区 → 金牛山街道 →
周家山社区): its nodes and the helpers that register subjects and post inspections on it."""
from __future__ import annotations

CITY, SHIHE, PINGQIAO = "411500000000", "411502000000", "411503000000"     # 信阳市, 浉河区, 平桥区
JINNIUSHAN, LAOCHENG = "411502008000", "411502001000"                     # 金牛山街道, 老城街道
ZHOUJIASHAN, XIANGTANG = "411502008001", "411502008006"                   # 周家山社区, 飨堂社区
MONTH = "2026-11"
PHOTO = {"uri": "photos/x.jpg", "sha256": "c" * 64}

TIERS = [
    (CITY, "信阳市", None, [SHIHE]),
    (SHIHE, "浉河区", CITY, [JINNIUSHAN]),
    (JINNIUSHAN, "金牛山街道", SHIHE, [ZHOUJIASHAN]),
    (ZHOUJIASHAN, "周家山社区", JINNIUSHAN, []),
]


def subject(api, node, name):
    response = api.post("/subjects", {"subject_type": "child_unit", "node": node, "name": name})
    assert response.status_code == 201, response.text
    return response.json()["subject_id"]


def inspect(api, subject_id, score, day, kind="routine", results=None):
    """An inspection on the national ten-area checklist whose score is `score` (100 − deductions)."""
    if results is None:
        results = deductions(100 - score)
    response = api.post("/inspections", {
        "kind": kind, "subject_id": subject_id, "checklist": {"version": "2010.1", "code": "national-ten-areas"},
        "inspectors": ["检查组"], "inspected_at": f"2026-11-{day:02d}T10:00:00+08:00", "results": results})
    assert response.status_code == 201, response.text
    assert response.json()["score"] == score
    return response.json()


def deductions(points: int) -> list[dict]:
    """Whole-point deductions spread over the checklist's items, each within the item's cap."""
    from services.contracts.checklists import default_catalogue
    out, left = [], points
    for _, item in default_catalogue().checklist("2010.1", "national-ten-areas").items():
        if left <= 0:
            break
        step = min(left, int(item.max_points))
        out.append({"item_code": item.code, "findings": 1, "deduction": step})
        left -= step
    assert left == 0, points
    return out
