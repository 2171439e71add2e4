"""A quiet child tier is not a silent one (issue 12): a child stack tells its parent it is up
(`stack_heartbeat`, every SCORING_HEARTBEAT_SECONDS) whether or not any figure changed, so
its figures stay current at the parent; once its link is cut the heartbeats stop, and past
the policy's `rollup.stale_after_hours` the parent marks the figures built from it stale
until the link carries a heartbeat again. Two stacks, one federation link, the real broker
and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from services.plumbing.db import make_engine
from services.scoring.models import ChildFreshness
from services.tools import federation
from tests import support
from tests.system.test_tiers import JINNIUSHAN, MONTH, SHIHE, ZHOUJIASHAN, inspect, ranking, settle, subject

pytestmark = pytest.mark.system

TIERS = [
    (SHIHE, "浉河区", None, [JINNIUSHAN]),
    (JINNIUSHAN, "金牛山街道", SHIHE, []),
]


def freshness(stack) -> dict[str, dict]:
    response = stack.scoring.get("/children/freshness")
    assert response.status_code == 200, response.text
    return {f["child"]: f for f in response.json()}


def street_row(district) -> dict | None:
    table = ranking(district, "street")
    return {r["node"]: r for r in table["ranking"] + table["below_minimum_sample"]}.get(JINNIUSHAN)


def rewind_last_heard(database_url: str, when: datetime) -> None:
    """What two silent days look like to the district, without waiting two days."""
    engine = make_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            session.execute(update(ChildFreshness).where(ChildFreshness.child_node == JINNIUSHAN)
                            .values(last_heard_at=when))
    finally:
        engine.dispose()


def test_a_quiet_child_is_kept_fresh_by_its_heartbeat_and_a_cut_link_marks_its_figures_stale(tier_chain):
    config, stacks = tier_chain(TIERS, SCORING_HEARTBEAT_SECONDS=0.5)
    district, street = stacks[SHIHE], stacks[JINNIUSHAN]

    # Before anything is inspected the street has no figure to report, but it is heard from.
    settle(lambda: freshness(district).get(JINNIUSHAN, {}).get("last_event_type") == "stack_heartbeat",
           "the district hears the street's heartbeat")

    zhou = subject(street.inspection, ZHOUJIASHAN, "周家山社区")
    inspect(street.inspection, zhou, 90, 3)
    inspect(street.inspection, zhou, 92, 10)                # the street: 91, from two inspections
    row = settle(lambda: (lambda r: r if r and r["score"] == 91.0 else None)(street_row(district)),
                 "the district has the street's figure")
    assert (row["stale"], row["stale_reason"]) == (False, None)
    # The street goes quiet (nothing more inspected); its heartbeats keep the figure current.
    settle(lambda: freshness(district)[JINNIUSHAN]["last_event_type"] == "stack_heartbeat",
           "a heartbeat after the last report")
    assert street_row(district)["stale"] is False

    federation.set_upward_link(config, JINNIUSHAN, enabled=False)
    settle(lambda: any(l["upstream"] == f"child-{JINNIUSHAN}" and l["status"] != "running"
                       for l in federation.link_status(config)), "street → district link down", timeout=30)
    # Silent for 72 h, longer than the street scheme's 48: a heartbeat already on its way when
    # the link was cut may still land and undo a rewind, so rewind until one sticks.
    silent_since = datetime.now(timezone.utc) - timedelta(hours=72)

    def stale_after_rewind():
        rewind_last_heard(district.database_url, silent_since)
        return (lambda r: r if r["stale"] else None)(street_row(district))
    row = settle(stale_after_rewind, "the street's figure marked stale")
    local = silent_since.astimezone(timezone(timedelta(hours=8))).strftime("%Y-%m-%d %H:%M")
    assert row["stale_reason"] == f"金牛山街道 ({JINNIUSHAN}) 自 {local} 起未上报"
    assert row["score"] == 91.0                             # still shown, as what it was

    federation.set_upward_link(config, JINNIUSHAN, enabled=True)
    row = settle(lambda: (lambda r: r if not r["stale"] else None)(street_row(district)),
                 "the street heard again once the link is back")
    assert (row["score"], row["stale_reason"]) == (91.0, None)   # no new figure: a heartbeat cleared it
    heard = freshness(district)[JINNIUSHAN]
    assert heard["last_event_type"] == "stack_heartbeat"
    assert datetime.fromisoformat(heard["last_heard_at"]) > silent_since + timedelta(hours=71)
