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
    with pytest.raises(ValueError, match=r"^a monthly bulletin needs a month period \(YYYY-MM\), got '2026-Q4'$"):
        assemble_bulletin("2026-Q4", "411502008000", "金牛山街道", [], [], [], BulletinPolicy(), NOW)


def test_the_public_board_carries_ranks_names_and_the_red_and_black_lists_only():
    from services.notify.bulletin import public_board
    data = build([s("A", 1, 99, vetoed=True, reasons=["被媒体曝光：某某记者"]), s("B", 2, 90, movement=1),
                  s("C", 3, 85), s("D", 4, 60)], commend_top=1, criticise_bottom=1,
                 tasks=[t("1", "公厕", opened=datetime(2026, 11, 2, tzinfo=CST), overdue=datetime(2026, 11, 5, tzinfo=CST))])
    board = public_board(data.to_dict())
    assert board == {
        "ranking": [
            {"rank": 1, "name": "社区A", "score": 99, "scale": 100, "grade": None, "movement": "新", "vetoed": True},
            {"rank": 2, "name": "社区B", "score": 90, "scale": 100, "grade": None, "movement": "↑1", "vetoed": False},
            {"rank": 3, "name": "社区C", "score": 85, "scale": 100, "grade": None, "movement": "新", "vetoed": False},
            {"rank": 4, "name": "社区D", "score": 60, "scale": 100, "grade": None, "movement": "新", "vetoed": False}],
        "red": [{"rank": 2, "name": "社区B", "score": 90}],
        "black": [{"rank": 1, "name": "社区A", "score": 99, "why": "一票否决"},
                  {"rank": 4, "name": "社区D", "score": 60, "why": "排名靠后"}]}
    # The veto's note, the tasks and the subject ids stay in the office's bulletin.
    assert "记者" not in repr(board) and "subject_id" not in repr(board) and "task" not in repr(board)


def test_the_public_board_leaves_out_the_offices_own_roll_up():
    from services.notify.bulletin import public_board
    office = ScoreFact("411502008000", "金牛山街道", "411502008000", 97.5, 100, 1, True, None, None, False, (), 3)
    data = build([office, s("A", 1, 100), s("B", 2, 95)], commend_top=3, criticise_bottom=0)
    board = public_board(data.to_dict())
    assert [(e["rank"], e["name"]) for e in board["ranking"]] == [(1, "社区A"), (2, "社区B")]
    assert [e["name"] for e in board["red"]] == ["社区A", "社区B"]


# --- peers, problem dates and one score format (#15) -----------------------------------------


def test_only_the_peers_of_the_tier_below_are_ranked_and_commended():
    """The street office's own aggregate (its node scored as a child unit of the district) is
    no peer of its communities: no second "rank 1", and the true third place is commended."""
    street = ScoreFact("411502008000", "金牛山街道", "411502008000", 90.5, 100, 1, True, None, None, False, (), 12)
    department = ScoreFact("d1", "街道城管科", "411502008000", 80, 100, 1, True, None, None, False, (), 4,
                           "department")
    communities = [ScoreFact(f"c{i}", f"社区{i}", f"41150200800{i}", 95 - i, 100, i, True) for i in (1, 2, 3, 4)]
    data = build([street, department, *communities], commend_top=3, criticise_bottom=1)
    assert [(e.rank, e.name) for e in data.ranking] == [(1, "社区1"), (2, "社区2"), (3, "社区3"), (4, "社区4")]
    assert [c["name"] for c in data.commended] == ["社区1", "社区2", "社区3"]
    assert [c["name"] for c in data.criticised] == ["社区4"]
    assert data.unranked == []
    assert [(g["label"], [r["name"] for r in g["ranking"]]) for g in data.other_rankings] == [
        ("机关部门", ["街道城管科"])]
    assert data.figures["subjects"] == 4 and data.figures["ranked"] == 4


def test_problems_and_close_outs_count_in_the_months_they_happened_not_when_entered():
    """History entered in November: found and closed in March, it is March's, not November's."""
    entered = datetime(2026, 11, 20, 9, tzinfo=CST)
    march = lambda d: datetime(2026, 3, d, 10, tzinfo=CST)  # noqa: E731
    task = TaskFact("h1", "A", "社区A", "某点位", "问题", "公厕", "公厕", "minor", "closed", march(17), entered,
                    None, 0, march(15), None, None, march(10))
    live = t("n1", "河道", opened=datetime(2026, 11, 5, tzinfo=CST))
    march_data = assemble_bulletin("2026-03", "411502008000", "金牛山街道", [], [], [task, live],
                                   BulletinPolicy(), NOW)
    assert march_data.figures["problems_found"] == 1 and march_data.figures["tasks_closed"] == 1
    assert march_data.figures["closed_on_time"] == 1 and march_data.figures["close_rate"] == 1.0
    assert march_data.top_categories == [] or march_data.top_categories[0]["category_name"] == "公厕"
    november = build([], tasks=[task, live])
    assert november.figures["problems_found"] == 1 and november.figures["tasks_closed"] == 0
    assert november.figures["tasks_opened"] == 1  # the old key, kept for stored templates


def test_every_score_prints_with_two_decimals():
    from services.notify.templates import Templates
    data = build([ScoreFact("a", "社区甲", "411502008001", 92, 100, 1, True),
                  ScoreFact("b", "社区乙", "411502008002", 86.74, 100, 2, True)], commend_top=2)
    rendered = Templates().render("bulletin", {"b": data.to_dict(), "office": "金牛山街道", "sent_at": NOW})
    assert "| 1 | 社区甲 | 92.00 |" in rendered.markdown and "| 2 | 社区乙 | 86.74 |" in rendered.markdown
    assert "社区甲（第1名，92.00分）" in rendered.markdown
    assert "<td>92.00</td>" in rendered.html


def test_missed_scheduled_checks_are_counted_where_the_office_counts_them():
    from services.notify.templates import Templates
    data = assemble_bulletin("2026-11", "411502008000", "金牛山街道", [], [], [], BulletinPolicy(), NOW,
                             missed_checks=2)
    assert data.figures["missed_checks"] == 2
    rendered = Templates().render("bulletin", {"b": data.to_dict(), "office": "金牛山街道", "sent_at": NOW})
    assert "按检查计划漏检 2 次" in rendered.markdown and "按检查计划漏检 2 次" in rendered.html
    quiet = build([]).to_dict()
    assert "漏检" not in Templates().render("bulletin", {"b": quiet, "office": "金牛山街道", "sent_at": NOW}).markdown


def test_a_figure_from_a_silent_child_is_marked_and_explained_not_hidden():
    """Scoring published that 社区B's stack has been silent past the policy's limit: its row
    keeps its place and score, marked 数据未更新, and the reason is printed under the ranking."""
    from services.notify.templates import Templates
    reason = "社区B (411502008002) 自 2026-11-20 16:00 起未上报"
    stale = ScoreFact("B", "社区B", "411502008002", 88, 100, 2, True, stale_reason=reason)
    data = build([s("A", 1, 91), stale])
    assert [(e.name, e.rank, e.score, e.stale_reason) for e in data.ranking] == [
        ("社区A", 1, 91, None), ("社区B", 2, 88, reason)]
    assert data.stale == [{"subject_id": "B", "name": "社区B", "node": "411502008002", "reason": reason}]
    rendered = Templates().render("bulletin", {"b": data.to_dict(), "office": "金牛山街道", "sent_at": NOW})
    assert "| 2 | 社区B（数据未更新） | 88.00 |" in rendered.markdown
    assert f"数据未更新（以下单位的得分为其最后一次上报）：{reason}。" in rendered.markdown
    assert "<td>社区B（数据未更新）</td>" in rendered.html and reason in rendered.html
    assert "数据未更新" not in Templates().render(
        "bulletin", {"b": build([s("A", 1, 91)]).to_dict(), "office": "金牛山街道", "sent_at": NOW}).markdown
