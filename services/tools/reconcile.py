"""Reconcile a stack: every accepted inspection stored, scored and tasked exactly once, and
its scores reported upward — counts, and the ids of any difference.

    python -m services.tools.reconcile --node 411502008000 [--database-url URL]
        [--inspection-db URL] [--scoring-db URL] [--tasks-db URL]
        [--parent-scoring-db URL] [--settle SECONDS] [--json]

Reads the services' databases (one shared DATABASE_URL, or each service's own as in
DB_URIS), never the broker, and changes nothing. On a live stack events may be in flight:
`--settle 60` repeats the check until it holds or the time is up (in-flight counts are
reported: unsent outbox rows). Exit 0 when everything reconciles, 1 with the differences.

- accepted: submitted inspections in the inspection service's database;
- scored: the scoring service's inputs; `not_scored` are accepted but never scored (lost),
  `scored_unknown` are scored without an accepted inspection here (forged or misrouted);
- tasked: every finding with a deduction of an accepted inspection must have exactly one
  rectification task (a unique constraint forbids a second); `tasks_missing` lists
  `inspection:item`, `tasks_unknown` tasks of no accepted inspection that were not handed
  down from a tier above;
- published upward: the home node's score for each period as last reported on
  `chuangwei.up`; `upward_behind` lists periods whose stored score the parent has not been
  sent yet. With `--parent-scoring-db`, `parent_behind` lists periods where the parent's
  stored copy of this node's score is not the latest.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from services.contracts.nodes import is_within, normalize_code
from services.contracts.tiers import UP_EXCHANGE
from services.inspection import models as inspection_models
from services.scoring import models as scoring_models
from services.scoring.domain import INDICATOR_KINDS
from services.tasks import models as tasks_models


@dataclass
class Report:
    node: str
    accepted: int = 0
    scored: int = 0
    findings_with_deduction: int = 0
    tasks: int = 0
    tasked_inspections: int = 0
    published_upward: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)
    not_scored: list[str] = field(default_factory=list)
    scored_unknown: list[str] = field(default_factory=list)
    tasks_missing: list[str] = field(default_factory=list)
    tasks_unknown: list[str] = field(default_factory=list)
    upward_behind: list[str] = field(default_factory=list)
    parent_behind: list[str] = field(default_factory=list)

    @property
    def differences(self) -> dict[str, list[str]]:
        return {name: ids for name, ids in (
            ("not_scored", self.not_scored), ("scored_unknown", self.scored_unknown),
            ("tasks_missing", self.tasks_missing), ("tasks_unknown", self.tasks_unknown),
            ("upward_behind", self.upward_behind), ("parent_behind", self.parent_behind)) if ids}

    @property
    def consistent(self) -> bool:
        return not self.differences

    def as_dict(self) -> dict:
        return {**asdict(self), "consistent": self.consistent}

    def lines(self) -> list[str]:
        out = [f"stack {self.node}",
               f"  accepted inspections     {self.accepted}",
               f"  scored                   {self.scored}",
               f"  findings to task         {self.findings_with_deduction} "
               f"(of {self.tasked_inspections} inspections); tasks {self.tasks}",
               f"  published upward         {self.published_upward} score reports",
               "  in flight (unsent)       " + (", ".join(f"{k} {v}" for k, v in self.in_flight.items()) or "none")]
        for name, ids in self.differences.items():
            shown = ", ".join(ids[:20]) + (f" … (+{len(ids) - 20})" if len(ids) > 20 else "")
            out.append(f"  DIFFERENCE {name} ({len(ids)}): {shown}")
        out.append("  reconciled" if self.consistent else "  NOT reconciled")
        return out


def _unsent(conn, table) -> int:
    return conn.execute(select(func.count()).select_from(table).where(table.c.published_at.is_(None))).scalar_one()


def reconcile(inspection_db: Engine, scoring_db: Engine, tasks_db: Engine, node: str,
              parent_scoring_db: Engine | None = None) -> Report:
    node = normalize_code(node)
    report = Report(node=node)
    Inspection, ItemResult = inspection_models.Inspection, inspection_models.ItemResult
    with inspection_db.connect() as conn:
        accepted = set(conn.execute(select(Inspection.id).where(Inspection.submitted_at.is_not(None))).scalars())
        findings = {f"{i}:{item}" for i, item in conn.execute(
            select(ItemResult.inspection_id, ItemResult.item_code)
            .join(Inspection, Inspection.id == ItemResult.inspection_id)
            .where(Inspection.submitted_at.is_not(None), ItemResult.deduction > 0))}
        report.in_flight["inspection"] = _unsent(conn, inspection_models.outbox)
    ScoreInput, PeriodScore, scoring_outbox = (scoring_models.ScoreInputRow, scoring_models.PeriodScore,
                                               scoring_models.outbox)
    with scoring_db.connect() as conn:
        # An indicator's input (a survey wave's satisfaction rate) is no inspection.
        scored = set(conn.execute(select(ScoreInput.inspection_id).where(
            ScoreInput.kind.not_in(sorted(INDICATOR_KINDS)))).scalars())
        report.in_flight["scoring"] = _unsent(conn, scoring_outbox)
        upward = conn.execute(select(scoring_outbox.c.body, scoring_outbox.c.published_at)
                              .where(scoring_outbox.c.exchange == UP_EXCHANGE,
                                     scoring_outbox.c.event_type == "score_published")
                              .order_by(scoring_outbox.c.id)).all()
        own_scores = {(r.period_kind, r.period): r for r in conn.execute(
            select(PeriodScore.period_kind, PeriodScore.period, PeriodScore.revision, PeriodScore.inputs)
            .where(PeriodScore.node == node, PeriodScore.subject_type == "child_unit"))}
    with tasks_db.connect() as conn:
        Task = tasks_models.Task
        tasks = conn.execute(select(Task.inspection_id, Task.item_code, Task.inspecting_node)).all()
        report.in_flight["tasks"] = _unsent(conn, tasks_models.outbox)

    report.accepted, report.scored = len(accepted), len(scored & accepted)
    report.not_scored = sorted(accepted - scored)
    report.scored_unknown = sorted(scored - accepted)
    report.findings_with_deduction = len(findings)
    report.tasked_inspections = len({f.split(":", 1)[0] for f in findings})
    task_keys = {f"{t.inspection_id}:{t.item_code}" for t in tasks}
    report.tasks = len(task_keys & findings)
    report.tasks_missing = sorted(findings - task_keys)
    from_above = {f"{t.inspection_id}:{t.item_code}" for t in tasks
                  if t.inspecting_node and t.inspecting_node != node and is_within(node, t.inspecting_node)}
    report.tasks_unknown = sorted(task_keys - findings - from_above)

    # The latest report sent up for each period must carry what is stored now.
    last_sent: dict[tuple[str, str], dict] = {}
    for body, published_at in upward:
        payload = body.get("payload") or {}
        if published_at is not None:
            report.published_upward += 1
            last_sent[(payload.get("period_kind"), payload.get("period"))] = payload
    for key, row in sorted(own_scores.items()):
        sent = last_sent.get(key)
        if row.revision and (sent is None or sent.get("revision") != row.revision):
            report.upward_behind.append(f"{key[0]}:{key[1]}")
    if parent_scoring_db is not None:
        ChildScore = scoring_models.ChildScore
        with parent_scoring_db.connect() as conn:
            held = {(r.period_kind, r.period): r for r in conn.execute(
                select(ChildScore.period_kind, ChildScore.period, ChildScore.inputs, ChildScore.score,
                       ChildScore.revision)
                # A child's report is stored as its own input: parent_node = child_node = the child.
                .where(ChildScore.parent_node == node, ChildScore.child_node == node))}
        for key, sent in sorted(last_sent.items()):
            copy = held.get(key)
            if copy is None or copy.revision != sent.get("revision") or copy.inputs != sent.get("inputs"):
                report.parent_behind.append(f"{key[0]}:{key[1]}")
    return report


def reconcile_until_settled(engines: dict[str, Engine], node: str, settle: float,
                            interval: float = 1.0) -> tuple[Report, float]:
    """Repeat until the stack reconciles with nothing in flight, or `settle` seconds pass;
    the last report and how long it took."""
    started = time.monotonic()
    while True:
        report = reconcile(engines["inspection"], engines["scoring"], engines["tasks"], node,
                           engines.get("parent_scoring"))
        took = time.monotonic() - started
        if (report.consistent and not any(report.in_flight.values())) or took >= settle:
            return report, took
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", default=os.environ.get("NODE_CODE"), help="the stack's home division code")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="the database the services share (default: $DATABASE_URL)")
    for service in ("inspection", "scoring", "tasks"):
        parser.add_argument(f"--{service}-db", help=f"the {service} service's own database (DB_URIS)")
    parser.add_argument("--parent-scoring-db", help="the parent tier's scoring database: check what it holds")
    parser.add_argument("--settle", type=float, default=0.0, help="retry for up to this many seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    args = parser.parse_args(argv)
    if not args.node:
        parser.error("--node (or NODE_CODE) is required")
    urls = {s: getattr(args, f"{s}_db") or args.database_url for s in ("inspection", "scoring", "tasks")}
    if not all(urls.values()):
        parser.error("give --database-url, or each of --inspection-db, --scoring-db, --tasks-db")
    engines = {s: create_engine(url, pool_size=1, max_overflow=0) if url.startswith("postgresql")
               else create_engine(url) for s, url in urls.items()}
    if args.parent_scoring_db:
        engines["parent_scoring"] = create_engine(args.parent_scoring_db)
    try:
        report, took = reconcile_until_settled(engines, args.node, args.settle)
    finally:
        for engine in engines.values():
            engine.dispose()
    if args.json:
        print(json.dumps({**report.as_dict(), "seconds": round(took, 1)}, ensure_ascii=False))
    else:
        print("\n".join(report.lines()))
    return 0 if report.consistent else 1


if __name__ == "__main__":
    sys.exit(main())
