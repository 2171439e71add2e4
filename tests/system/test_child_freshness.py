"""A quiet child tier is not a silent one (issue 12): a child stack tells its parent it is up
(`stack_heartbeat`, every SCORING_HEARTBEAT_SECONDS) whether or not any figure changed, so
its figures stay current at the parent; once its link is cut the heartbeats stop, and past
the policy's `rollup.stale_after_hours` the parent marks the figures built from it stale
until the link carries a heartbeat again; the district's scoring publishes each change
(`child_freshness_changed`) and its monthly bulletin marks the figure. Two stacks, one
federation link, the real broker and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from services.notify.service import NotifyService
from services.plumbing.db import make_engine
from services.scoring.models import ChildFreshness
from services.tools import federation
from tests import support
from tests.system.test_tiers import ranking, settle
from tests.tiers import JINNIUSHAN, MONTH, SHIHE, XIANGTANG, ZHOUJIASHAN, inspect, subject

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


def staleness_published(database_url: str) -> list[tuple[bool, str | None]]:
    return [(row[0] == "true", row[1]) for row in support.scalar_rows(
        database_url, "select body -> 'payload' ->> 'stale', body -> 'payload' ->> 'reason' from scoring_outbox "
                      "where event_type = 'child_freshness_changed' order by id")]


def bulletin(notify) -> dict:
    response = notify.post("/bulletins", {"period": MONTH, "notify": False})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_quiet_child_is_kept_fresh_by_its_heartbeat_and_a_cut_link_marks_its_figures_stale(
        tier_chain, infrastructure):
    config, stacks = tier_chain(TIERS, SCORING_HEARTBEAT_SECONDS=0.5, SCORING_FRESHNESS_SECONDS=0.5)
    district, street = stacks[SHIHE], stacks[JINNIUSHAN]
    port = support.free_port()
    notify_config = support.base_config(support.with_vhost(infrastructure["amqp_uri"], district.vhost),
                                        district.database_url, node=SHIHE, NOTIFY_BULLETIN_SCHEDULE="false",
                                        WEB_ADDRESSES={"notify": f"127.0.0.1:{port}"}, max_workers=3)
    with support.running_services(notify_config, NotifyService):
        run(config, district, street, support.ApiClient(f"http://127.0.0.1:{port}"))


def run(config, district, street, notify):

    # Before anything is inspected the street has no figure to report, but it is heard from.
    settle(lambda: freshness(district).get(JINNIUSHAN, {}).get("last_event_type") == "stack_heartbeat",
           "the district hears the street's heartbeat")

    zhou = subject(street.inspection, ZHOUJIASHAN, "周家山社区")
    xiang = subject(street.inspection, XIANGTANG, "飨堂社区")
    for subject_id, first, second in ((zhou, 90, 92), (xiang, 88, 86)):
        inspect(street.inspection, subject_id, first, 3)
        inspect(street.inspection, subject_id, second, 10)
    # The street: mean(周家山 91, 飨堂 87) = 89, from two communities: ranked at the district.
    row = settle(lambda: (lambda r: r if r and r["score"] == 89.0 and r["ranked"] else None)(street_row(district)),
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
    assert row["score"] == 89.0                             # still shown, as what it was
    # Published once as stale; the bulletin marks the row and says why.
    settle(lambda: staleness_published(district.database_url)[-1:] == [(True, row["stale_reason"])],
           "the district's scoring published the street as stale")
    made = settle(lambda: (lambda b: b if b["data"]["stale"] else None)(bulletin(notify)),
                  "the bulletin knows the street is stale")
    assert [(r["node"], r["score"], r["stale_reason"]) for r in made["data"]["ranking"]] == [
        (JINNIUSHAN, 89.0, row["stale_reason"])]
    markdown = notify.get(f"/bulletins/{made['bulletin_id']}/markdown").text
    assert "金牛山街道（数据未更新）" in markdown and row["stale_reason"] in markdown

    federation.set_upward_link(config, JINNIUSHAN, enabled=True)
    row = settle(lambda: (lambda r: r if not r["stale"] else None)(street_row(district)),
                 "the street heard again once the link is back")
    assert (row["score"], row["stale_reason"]) == (89.0, None)   # no new figure: a heartbeat cleared it
    heard = freshness(district)[JINNIUSHAN]
    assert heard["last_event_type"] == "stack_heartbeat"
    assert datetime.fromisoformat(heard["last_heard_at"]) > silent_since + timedelta(hours=71)
    settle(lambda: staleness_published(district.database_url)[-1:] == [(False, None)],
           "the district's scoring published the street as current again")
    made = settle(lambda: (lambda b: b if not b["data"]["stale"] else None)(bulletin(notify)),
                  "the bulletin no longer marks the street")
    assert [(r["node"], r["stale_reason"]) for r in made["data"]["ranking"]] == [(JINNIUSHAN, None)]
