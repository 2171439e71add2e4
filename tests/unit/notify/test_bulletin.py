"""Assembling the monthly bulletin from scores and tasks (pure)."""
from datetime import datetime, timezone

import pytest

from services.contracts.periods import CST, Period
from services.notify.bulletin import ScoreFact, TaskFact, assemble_bulletin, movement_text, period_window
from services.notify.domain import BulletinPolicy

NOW = datetime(2026, 12, 1, 9, tzinfo=CST)


def s(subject_id, rank, score, movement=None, vetoed=False, ranked=True, reasons=()):
    return ScoreFact(subject_id, f"社区{subject_id}", "411502008001", score, 100, rank, ranked, movement,
                     None, vetoed, tuple(reasons), 4)


def t(task_id, category="公厕", opened=None, overdue=None, closed=None, deadline=None, relapse_of=None,
      subject="A"):
    return TaskFact(task_id, subject, f"社区{subject}", "某点位", "问题", category, category, "minor",
                    "closed" if closed else "open", deadline or datetime(2026, 11, 20, tzinfo=CST), opened, overdue,
                    1 if overdue else 0, closed, relapse_of, opened if relapse_of else None)


def build(scores, previous=(), tasks=(), **policy):
    return assemble_bulletin("2026-11", "411502008000", "金牛山街道", scores, previous, tasks,
                             BulletinPolicy(**policy), NOW)


def test_ranking_order_and_movement_against_last_month():
    data = build([s("B", 2, 88), s("A", 1, 91), s("C", 3, 70)],
                 previous=[s("A", 3, 80), s("B", 1, 95), s("C", 2, 85)])
    assert [(e.name, e.rank, e.previous_rank, e.movement, e.movement_text) for e in data.ranking] == [
        ("社区A", 1, 3, 2, "↑2"), ("社区B", 2, 1, -1, "↓1"), ("社区C", 3, 2, -1, "↓1")]
    assert data.title == "金牛山街道2026年11月创卫工作月度通报"
    assert data.previous_period == "2026-10"


def test_published_movement_wins_and_newcomers_are_marked_new():
    data = build([s("A", 1, 91, movement=4), s("N", 2, 80)], previous=[s("A", 3, 80)])
    assert [(e.movement, e.movement_text) for e in data.ranking] == [(4, "↑4"), (None, "新")]
    assert movement_text(0) == "—"


def test_veto_is_never_commended_and_always_criticised():
    data = build([s("A", 1, 99, vetoed=True, reasons=["被媒体曝光"]), s("B", 2, 90), s("C", 3, 85), s("D", 4, 60),
                  s("E", None, 97, ranked=False)], commend_top=2, criticise_bottom=1)
    assert [c["name"] for c in data.commended] == ["社区B", "社区C"]
    assert [(c["name"], c["reasons"]) for c in data.criticised] == [
        ("社区A", ["一票否决：被媒体曝光"]), ("社区D", ["排名后1位"])]
    assert [u["name"] for u in data.unranked] == ["社区E"]
    assert data.unranked[0]["note"] == "样本不足，不参加排名"


def test_overdue_relapsed_and_recurring_categories_of_the_month():
    nov = lambda d: datetime(2026, 11, d, 10, tzinfo=CST)  # noqa: E731
    tasks = [
        t("1", "公厕", opened=nov(2), overdue=nov(5)),                      # overdue in Nov, still open
        t("2", "公厕", opened=nov(3), overdue=nov(6), closed=nov(9), deadline=nov(6)),       # overdue then closed in Nov
        t("3", "公厕", opened=nov(4), closed=nov(5), deadline=nov(6)),        # closed on time
        t("4", "垃圾站房", opened=nov(10), relapse_of="old"),
        t("5", "垃圾站房", opened=nov(11)),
        t("6", "河道", opened=nov(12)),
        t("7", "公厕", opened=datetime(2026, 10, 2, tzinfo=CST), overdue=datetime(2026, 10, 10, tzinfo=CST),
          closed=datetime(2026, 10, 30, tzinfo=CST)),                       # all in October
        # Opened 23:30 on 30 Nov Beijing time = 15:30 UTC: November's.
        t("8", "河道", opened=datetime(2026, 11, 30, 15, 30, tzinfo=timezone.utc)),
        # 00:30 on 1 Dec Beijing time = 16:30 UTC on 30 Nov: December's.
        t("9", "河道", opened=datetime(2026, 11, 30, 16, 30, tzinfo=timezone.utc)),
    ]
    data = build([], tasks=tasks, top_categories=2)
    assert [x["task_id"] for x in data.overdue_tasks] == ["1", "2"]
    assert [x["task_id"] for x in data.relapsed_tasks] == ["4"]
    assert [(c["category_name"], c["count"]) for c in data.top_categories] == [("公厕", 3), ("垃圾站房", 2)]
    assert data.figures["tasks_opened"] == 7 and data.figures["tasks_closed"] == 2
    assert data.figures["closed_on_time"] == 1 and data.figures["close_rate"] == round(2 / 7, 4)


def test_only_recurring_categories_count():
    nov = datetime(2026, 11, 5, tzinfo=CST)
    data = build([], tasks=[t("1", "公厕", opened=nov), t("2", "河道", opened=nov)], min_category_count=2)
    assert data.top_categories == []


def test_period_window_is_beijing_time():
    start, end = period_window(Period.parse("2026-11"))
    assert start == datetime(2026, 10, 31, 16, tzinfo=timezone.utc)
    assert end == datetime(2026, 11, 30, 16, tzinfo=timezone.utc)


def test_only_a_month_makes_a_monthly_bulletin():
    with pytest.raises(ValueError):
        assemble_bulletin("2026-Q4", "411502008000", "金牛山街道", [], [], [], BulletinPolicy(), NOW)
