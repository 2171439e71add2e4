"""Sample template contexts, one per notice, for the test render of a template before it is stored.

Built from the golden event samples (`services/contracts/events/samples/`) the way the use
cases build the context of a real event, so a template that renders here renders for the
events of its notice.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

from services.notify.bulletin import ScoreFact, TaskFact, assemble_bulletin
from services.notify.domain import BulletinPolicy

SAMPLES = Path(__file__).resolve().parents[1] / "contracts" / "events" / "samples"
SENT_AT = datetime(2026, 11, 23, 1, 0, tzinfo=timezone.utc)

# Which event each notice is written for (as in the default rules).
NOTICE_EVENTS = {"rectification": "task_opened", "urge": "task_overdue", "escalation": "task_escalated",
                 "verification": "task_closed", "relapse": "task_relapsed", "commendation": "score_published",
                 "criticism": "score_published", "inspection": "inspection_submitted",
                 "coordination": "coordination_requested", "missed_check": "check_missed"}


@lru_cache(maxsize=None)
def _payload(event_type: str) -> dict:
    with open(SAMPLES / f"{event_type}.v1.json", encoding="utf-8") as fh:
        return json.load(fh)["payload"]


def _bulletin() -> dict:
    deadline = datetime(2026, 11, 10, 10, tzinfo=timezone.utc)
    scores = [ScoreFact("s1", "周家山社区", "411502008001", 95.5, 100, 1, True, 2, "优秀"),
              ScoreFact("s2", "五星社区", "411502008002", 80, 100, 2, True, -1, "良好", True, ("被媒体曝光",), 4,
                        stale_reason="五星社区 (411502008002) 自 2026-11-20 16:00 起未上报"),
              ScoreFact("s3", "新华社区", "411502008003", None, 100, None, False, inputs=1)]
    previous = [ScoreFact("s1", "周家山社区", "411502008001", 90, 100, 3, True),
                ScoreFact("s2", "五星社区", "411502008002", 92, 100, 1, True)]
    tasks = [TaskFact("t1", "s1", "周家山社区", "周家山路公厕", "便池干净", "PT", "公厕", "major", "open",
                      deadline, deadline - timedelta(days=3), deadline, 2),
             TaskFact("t2", "s2", "五星社区", None, "垃圾清运及时", "RS", "垃圾站房", "minor", "closed",
                      deadline, deadline - timedelta(days=5), None, 0, deadline - timedelta(days=1), "t0",
                      deadline - timedelta(days=5))]
    return assemble_bulletin("2026-11", "411502008000", "金牛山街道", scores, previous, tasks, BulletinPolicy(),
                             SENT_AT).to_dict()


def sample_contexts(notice: str) -> list[dict]:
    """Every sample a notice's template must render: verification is sent on a pass (task_closed)
    and on a rejection (task_status_changed back to open)."""
    contexts = [sample_context(notice)]
    if notice == "verification":
        event = _payload("task_status_changed")
        contexts.append({"office": "金牛山街道", "sent_at": SENT_AT, "event": event, "task": event["task"],
                         "passed": False})
    return contexts


def sample_context(notice: str) -> dict:
    base = {"office": "金牛山街道", "sent_at": SENT_AT}
    if notice == "bulletin":
        return {**base, "b": _bulletin()}
    if notice == "newsletter":
        return {**base, "event": {"issue": 12, "title": "金牛山街道开展背街小巷集中整治",
                                  "content": "11月18日起，街道组织开展专项整治。\n\n各社区要对照问题清单逐项整改。",
                                  "period": "2026-11"}}
    event = _payload(NOTICE_EVENTS[notice])
    if "task" in event:
        context = {**base, "event": event, "task": event["task"]}
        if notice == "verification":
            context["passed"] = True
        if notice == "coordination":
            context["child"] = "周家山社区"
        return context
    return {**base, "event": event}
