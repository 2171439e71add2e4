"""The console's pure parts: what the dashboard shows, which actions a task offers whom,
redirect targets, static files and number formatting."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from services.console import views, web
from services.contracts.identity import Grant, Principal

STREET, COMMUNITY, DISTRICT = "411502008000", "411502008001", "411502000000"


def person(*grants) -> Principal:
    return Principal(subject="u", name="某人", grants=tuple(Grant(r, n) for r, n in grants))


def figure(subject_id, name, rank, score, movement=None, vetoed=False):
    return {"subject_id": subject_id, "name": name, "rank": rank, "score": score, "scale": 100, "grade": "优",
            "movement": movement, "vetoed": vetoed, "veto_reasons": ["被通报批评"] if vetoed else [], "inputs": 2}


def task(status="open", light="green", overdue=False, **extra):
    return {"task_id": "t", "status": status, "light": light, "overdue": overdue, "deadline_at": "2026-11-25T10:00:00Z",
            "responsible": {"node": COMMUNITY, "name": "周家山社区", "subject_id": "s"},
            "inspecting_node": STREET, "escalated_to": None, "delegated_to": None, **extra}


def test_dashboard_ranking_trend_lights_and_lists():
    ranking = {"period": "2026-11", "ranking": [figure("a", "甲社区", 1, 96, 2), figure("b", "乙社区", 2, 80, -1, True)],
               "below_minimum_sample": [{**figure("c", "丙社区", None, 99), "why_unranked": "1 inputs"}]}
    tasks = [task(), task(light="red", overdue=True, deadline_at="2026-11-20T00:00:00Z"), task(light="yellow"),
             task(status="closed", light=None), task(status="escalated", light="red", escalated_to=STREET)]
    histories = {"a": [{"period": "2026-10", "score": 90}, {"period": "2026-11", "score": 96}],
                 "b": [{"period": "2026-11", "score": 80}]}
    view = views.dashboard(ranking, tasks, [{"child": COMMUNITY, "name": "周家山社区", "seconds_since": 4000,
                                             "events": 3}], histories)
    assert [(r["rank"], r["name"], r["movement"], r["vetoed"]) for r in view["ranking"]] == [
        (1, "甲社区", "↑2", False), (2, "乙社区", "↓1", True)]
    assert view["unranked"] == [{"name": "丙社区", "score": 99, "why": "1 inputs"}]
    assert view["trend"] == {"labels": ["2026-10", "2026-11"],
                             "series": [{"name": "甲社区", "data": [90, 96]}, {"name": "乙社区", "data": [None, 80]}]}
    assert view["lights"] == {"red": 2, "yellow": 1, "green": 1}
    assert [t["deadline_at"] for t in view["overdue"]] == ["2026-11-20T00:00:00Z"]
    assert [t["status"] for t in view["escalated"]] == ["escalated"]
    taken_up = task(status="in_progress", escalated_to=STREET, coordination_pending=True)
    assert views.dashboard(None, [taken_up], None, {})["escalated"] == [taken_up]
    assert view["freshness"][0]["age"] == "66 分钟前" and view["freshness_visible"]
    assert views.dashboard(None, [], None, {})["freshness_visible"] is False


@pytest.mark.parametrize("status, who, expected", [
    ("open", [("rectifier", COMMUNITY)], ["start", "fix", "escalate"]),
    ("in_progress", [("rectifier", COMMUNITY)], ["fix", "escalate"]),
    ("fix_submitted", [("rectifier", COMMUNITY)], []),
    ("fix_submitted", [("inspector", STREET)], ["verify", "reject"]),
    ("fix_submitted", [("inspector", DISTRICT)], ["verify", "reject"]),   # a grant above covers the subtree
    ("open", [("inspector", STREET), ("viewer", STREET)], []),
    ("escalated", [("administrator", STREET)], ["answer"]),
    ("escalated", [("inspector", STREET)], ["answer"]),
    # An escalated task stays workable (issue 25): the subject starts or fixes it, never escalates twice.
    ("escalated", [("rectifier", COMMUNITY)], ["start", "fix"]),
    ("escalated", [("viewer", STREET), ("inspector", COMMUNITY)], []),
    ("closed", [("inspector", STREET), ("rectifier", COMMUNITY)], []),
])
def test_a_task_offers_the_actions_its_viewer_may_take(status, who, expected):
    assert views.task_actions(task(status=status, escalated_to=STREET), person(*who)) == expected


@pytest.mark.parametrize("status, who, expected", [
    # Escalated inside the street's own office (no parent stack) and taken up again: the office may still
    # answer while the coordination is pending; the subject fixes, the inspecting side closes out.
    ("in_progress", [("rectifier", COMMUNITY)], ["fix"]),
    ("in_progress", [("inspector", STREET)], ["answer"]),
    ("fix_submitted", [("inspector", STREET)], ["verify", "reject", "answer"]),
    ("fix_submitted", [("administrator", STREET)], ["answer"]),
    ("fix_submitted", [("inspector", DISTRICT)], ["verify", "reject", "answer"]),   # a grant above covers it
])
def test_a_task_escalated_inside_the_office_stays_workable_and_answerable(status, who, expected):
    escalated = task(status=status, escalated_to=STREET, coordination_pending=True)
    assert views.task_actions(escalated, person(*who)) == expected


def test_only_the_office_asked_answers_and_only_while_the_coordination_is_pending():
    upward = task(status="escalated", escalated_to=DISTRICT, coordination_pending=True)
    assert views.task_actions(upward, person(("administrator", STREET))) == []
    assert views.task_actions(upward, person(("inspector", DISTRICT))) == ["answer"]
    assert views.task_actions(upward, person(("rectifier", COMMUNITY))) == ["start", "fix"]
    answered = task(status="in_progress", escalated_to=STREET, coordination_pending=False)
    assert views.task_actions(answered, person(("inspector", STREET))) == []
    assert views.task_actions(answered, person(("rectifier", COMMUNITY))) == ["fix", "escalate"]
    closed = task(status="closed", escalated_to=STREET, coordination_pending=False)
    assert views.task_actions(closed, person(("administrator", STREET))) == []


def test_a_delegated_task_offers_nothing_here():
    assert views.task_actions(task(delegated_to=COMMUNITY), person(("rectifier", COMMUNITY))) == []


def test_photo_links_name_where_the_photo_is_shown():
    sha = "a" * 64
    [ref] = views.photo_refs([{"uri": f"photos/{sha}", "sha256": sha}], "task_id=t1")
    assert ref["full"] == f"/api/photos/photos/{sha}?task_id=t1"
    assert ref["thumb"] == f"/api/photos/photos/{sha}/thumbnail?task_id=t1"


@pytest.mark.parametrize("target, expected", [
    ("/ledger?status=open", "/ledger?status=open"), (None, "/"), ("", "/"), ("//evil.example/x", "/"),
    ("https://evil.example/", "/"), ("/\\evil.example", "/"), ("ledger", "/"),
])
def test_only_local_paths_are_followed_after_sign_in(target, expected):
    assert web.safe_next(target) == expected


def test_static_files_come_from_the_console_or_the_npm_packages_only(tmp_path):
    (tmp_path / "chart.js" / "dist").mkdir(parents=True)
    (tmp_path / "chart.js" / "dist" / "chart.umd.min.js").write_text("/* chart */")
    (tmp_path / "chart.js" / "package.json").write_text("{}")
    assert web.static_file("vendor/chart.js/chart.umd.min.js", tmp_path).get_data() == b"/* chart */"
    assert web.static_file("vendor/chart.js/../package.json", tmp_path) is None
    assert web.static_file("vendor/chart.js/chart.cjs", tmp_path) is None
    assert web.static_file("console.css", tmp_path).headers["Content-Type"] == "text/css; charset=utf-8"
    assert web.static_file("../service.py", tmp_path) is None


def test_numbers_and_times_as_people_read_them():
    assert [web.number(v) for v in (90.0, 93.333, 1000, None, "x")] == ["90", "93.33", "1000", "", "x"]
    assert views.local_time("2026-11-23T14:00:00+00:00") == "2026-11-23 22:00"
    assert views.this_month(datetime(2026, 11, 30, 16, 30, tzinfo=timezone.utc)) == "2026-12"


def test_a_held_back_explanation_is_labelled_in_chinese():
    """A figure held back from the subject side while a 暗访 awaits release (scoring's embargo)."""
    from services.console import views
    assert views.explain_rows({"held_back": "本期得分待发布 (…)", "recomputes": []}) == [
        ("待发布", "本期得分待发布 (…)"), ("recomputes", [])]
