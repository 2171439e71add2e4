"""Instants a client reports for something that just happened (issue 27: a platform's
backdated case): bounded by the campaign's start, an age and the present."""
from datetime import datetime, timedelta, timezone

from services.contracts.bounds import campaign_start, reported_instant_problem
from services.contracts.periods import CST

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=CST)


def test_the_campaign_start_comes_from_config():
    assert campaign_start({}) is None and campaign_start({"CAMPAIGN_START": ""}) is None
    assert campaign_start({"CAMPAIGN_START": "2026-03-01"}) == datetime(2026, 3, 1, tzinfo=CST)


def test_instants_before_the_start_too_old_or_in_the_future_are_refused():
    start = datetime(2026, 3, 1, tzinfo=CST)
    week = timedelta(days=7)
    assert reported_instant_problem(NOW - timedelta(hours=1), NOW, not_before=start, max_age=week) is None
    assert reported_instant_problem(NOW + timedelta(minutes=4), NOW) is None
    assert reported_instant_problem(NOW + timedelta(minutes=6), NOW).startswith("不能晚于当前时间")
    assert reported_instant_problem(datetime(2000, 1, 1, tzinfo=CST), NOW, not_before=start).startswith(
        "不能早于创卫工作开始日期 2026-03-01")
    assert reported_instant_problem(NOW - timedelta(days=8), NOW, max_age=week).startswith("不能早于 168 小时之前")
    assert reported_instant_problem(datetime(2026, 2, 28, 23, tzinfo=timezone.utc), NOW, not_before=start) is None
