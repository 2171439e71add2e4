"""The scorer: recompute figures, roll them up, re-rank peer groups and publish what changed."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session, defer

from services.contracts.errors import UnknownReference
from services.contracts.events.scoring import PolicyRef, RankChange, RankingPublished, ScoredSubject, ScorePublishedV2
from services.contracts.nodes import Tier, is_within, parent_of, tier_of
from services.contracts.periods import Period, PeriodKind
from services.contracts.tiers import UP_EXCHANGE, routing_key as tier_routing_key
from services.scoring import domain, metrics
from services.scoring.models import (Appraisal, ChildScore, LedgerFigures, PeriodScore, PolicyVersion, Ranking, ScoreInputRow,
                                     Subject, SubjectAlias, VectorVerdictInput, Veto)
from services.plumbing.cooperative import breathe
from services.plumbing.sql import binary_collation, is_postgres
from services.scoring.operations.context import CHILD, Context, _now, evaluating_node
from services.scoring.operations.policies import seed_default_policy, _latest_policy_rows, _effective_row


@dataclass
class Scorer:
    session: Session
    ctx: Context
    correlation_id: str | None = None
    _latest: dict[str, PolicyVersion] | None = None
    _policies: dict[tuple[str, int], domain.Policy] = field(default_factory=dict)
    _groups: set[tuple[str, str, str, str]] = field(default_factory=set)
    _touched: set[tuple[str, str, str]] = field(default_factory=set)
    _staged: list = field(default_factory=list)
    _child_revisions: list = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    # policies
    def policy_for(self, subject: Subject) -> tuple[PolicyVersion, domain.Policy]:
        if self._latest is None:
            seed_default_policy(self.session, self.ctx)
            self._latest = _latest_policy_rows(self.session)
        row = _effective_row(self._latest, evaluating_node(self.ctx, subject), self.ctx.home)
        key = (row.node, row.version)
        if key not in self._policies:
            self._policies[key] = domain.Policy.model_validate(row.document)
        return row, self._policies[key]

    # subjects
    def ensure_subject(self, subject_id: str, node: str, name: str, subject_type: str) -> Subject:
        subject = self.session.get(Subject, subject_id)
        if subject is None:
            subject = Subject(subject_id=subject_id, node=node, name=name, subject_type=subject_type,
                              tier=str(tier_of(node)), created_at=_now())
            self.session.add(subject)
            self.session.flush()
        elif subject.name != name and name:
            subject.name = name
        return subject

    # recomputation
    def refresh(self, subject_id: str, periods: list[Period]) -> None:
        self.refresh_many([subject_id], periods)

    def refresh_many(self, subject_ids, periods: list[Period]) -> None:
        """Recompute `subject_ids` for each period and, where a figure changed, their parents up
        the changed chain: the deepest tier first, each subject once, so a batch of inspections
        of many communities of one street recomputes the street once."""
        for period in periods:
            pending: dict[int, set[str]] = {}
            for subject, depth in self._depths(set(subject_ids)).items():
                pending.setdefault(depth, set()).add(subject)
            while pending:
                depth = max(pending)
                level = pending.pop(depth)
                results = self._recompute_many(sorted(level), period)
                for parent in self._roll_up_many([row for row, changed in results if changed], period):
                    pending.setdefault(Tier(tier_of(parent)).depth, set()).add(parent)

    def _depths(self, subject_ids: set[str]) -> dict[str, int]:
        rows = self.session.execute(select(Subject.subject_id, Subject.tier).where(
            Subject.subject_id.in_(subject_ids))).all() if subject_ids else []
        return {r.subject_id: Tier(r.tier).depth for r in rows}

    def recompute_period(self, period: Period) -> None:
        """Recompute every subject with a figure for `period` (after a policy change)."""
        ids = self.session.execute(select(PeriodScore.subject_id).where(
            PeriodScore.period_kind == str(period.kind), PeriodScore.period == period.key)).scalars().all()
        self.refresh_many(ids, [period])

    def compute_many(self, subject_ids: list[str], period: Period,
                     without: frozenset[str] = frozenset()) -> dict[str, tuple]:
        """One period's figures of several subjects of one tier as the domain computes them,
        reading each kind of input once for all of them; nothing is written. `without`: input
        ids left out — how a 暗访 not yet released is kept from a reader on the subject side
        (`embargo`). Returns {subject_id: (subject, policy row, result, minimum sample)}."""
        s = self.session
        kind, key = str(period.kind), period.key
        subjects = {x.subject_id: x for x in s.execute(select(Subject).where(
            Subject.subject_id.in_(subject_ids))).scalars()}
        column = getattr(ScoreInputRow, kind)
        inputs: dict[str, list] = {}
        # Columns, not objects: a year's inputs of 100 subjects are 5,200 rows (issue 11).
        for r in s.execute(select(ScoreInputRow.subject_id, ScoreInputRow.inspection_id, ScoreInputRow.kind,
                                  ScoreInputRow.score, ScoreInputRow.scale, ScoreInputRow.inspected_at)
                           .where(ScoreInputRow.subject_id.in_(subject_ids), column == key)
                           .order_by(ScoreInputRow.inspected_at, ScoreInputRow.inspection_id)):
            if r.inspection_id in without:
                continue
            inputs.setdefault(r.subject_id, []).append(
                domain.ScoreInput(r.inspection_id, r.kind, r.score, r.scale, r.inspected_at))
        parents = [sid for sid, x in subjects.items() if x.subject_type == CHILD and x.subject_id == x.node]
        children: dict[str, list] = {}
        if parents:
            for c in s.execute(select(ChildScore).where(
                    ChildScore.parent_node.in_(parents), ChildScore.period_kind == kind,
                    ChildScore.period == key).order_by(ChildScore.child_node)).scalars():
                children.setdefault(c.parent_node, []).append(
                    domain.ChildInput(c.child_node, c.name, c.score, c.scale, c.inputs, c.source))
        appraisals: dict[str, Appraisal] = {}
        for a in s.execute(select(Appraisal).where(Appraisal.subject_id.in_(subject_ids), Appraisal.period == key)
                           .order_by(Appraisal.created_at.desc(), Appraisal.id.desc())).scalars():
            appraisals.setdefault(a.subject_id, a)
        vetoes: dict[str, list] = {}
        for v in s.execute(select(Veto).where(Veto.subject_id.in_(subject_ids))
                           .order_by(Veto.created_at, Veto.id)).scalars():
            vetoes.setdefault(v.subject_id, []).append(domain.VetoInput(
                v.reason, v.period, " · ".join(x for x in (v.issued_by, v.note, v.reference) if x), "api",
                veto_id=v.id, revoked=v.revoked_at is not None))
        owner = {sid: sid for sid in subject_ids}
        for alias, sid in s.execute(select(SubjectAlias.alias, SubjectAlias.subject_id).where(
                SubjectAlias.subject_id.in_(subject_ids))).all():
            owner[alias] = sid
        ledger: dict[str, list] = {}
        for f in s.execute(select(LedgerFigures).where(LedgerFigures.subject_id.in_(list(owner)))
                           .order_by(LedgerFigures.subject_id, LedgerFigures.period)).scalars():
            ledger.setdefault(owner[f.subject_id], []).append(
                domain.LedgerInput(f.period, f.overdue_open, f.on_time_rate))
        vectors: dict[str, list] = {}
        months = [m.key for m in period.months()] if period.kind != PeriodKind.week else []
        if months:
            for v in s.execute(select(VectorVerdictInput).where(VectorVerdictInput.subject_id.in_(subject_ids),
                                                                VectorVerdictInput.period.in_(months))
                               .order_by(VectorVerdictInput.subject_id, VectorVerdictInput.period)).scalars():
                vectors.setdefault(v.subject_id, []).append(domain.VectorInput(v.period, v.verdict, v.revision))
        out = {}
        for subject_id in subject_ids:
            breathe()
            subject = subjects[subject_id]
            policy_row, policy = self.policy_for(subject)
            appraisal = appraisals.get(subject_id)
            appraisal_in = (domain.AppraisalInput(appraisal.score * policy.scale / appraisal.scale,
                                                  appraisal.appraised_by, appraisal.note) if appraisal else None)
            result = domain.subject_score(period, policy, inputs.get(subject_id, []), children.get(subject_id, []),
                                          appraisal_in, vetoes.get(subject_id, []), ledger.get(subject_id, []),
                                          vectors.get(subject_id, []))
            tier_rule = policy.ranking.tiers.get(Tier(subject.tier))
            min_inputs = tier_rule.min_inspections if (tier_rule and period.kind in policy.ranking.periods) else None
            out[subject_id] = (subject, policy_row, result, min_inputs)
        return out

    def _recompute_many(self, subject_ids: list[str], period: Period) -> list[tuple[PeriodScore, bool]]:
        """Recompute one period's figures of several subjects of one tier (`compute_many`).
        Returns each row and whether its score, inputs or scale changed (what its parent's
        roll-up uses). Only rows whose values differ are written."""
        s = self.session
        kind, key = str(period.kind), period.key
        computed = self.compute_many(subject_ids, period)
        # The stored explanation (a street's or a city's lists every child) is read only where
        # nothing else of the figure changed: otherwise it is replaced unread (issue 11).
        rows = {r.subject_id: r for r in s.execute(select(PeriodScore).options(defer(PeriodScore.explain)).where(
            PeriodScore.subject_id.in_(subject_ids), PeriodScore.period_kind == kind,
            PeriodScore.period == key)).scalars()}
        out = []
        for subject_id in subject_ids:
            subject, policy_row, result, min_inputs = computed[subject_id]
            policy = self._policies[(policy_row.node, policy_row.version)]
            row = rows.get(subject_id)
            new = row is None
            changed = new or (row.score, row.inputs, row.scale) != (result.score, result.inputs, policy.scale)
            if new:
                row = PeriodScore(subject_id=subject_id, period_kind=kind, period=key,
                                  peers=0, ranked=False, position=0, revision=0, published=None)
                s.add(row)
            values = dict(
                node=subject.node, name=subject.name, tier=subject.tier, subject_type=subject.subject_type,
                score=result.score, scale=policy.scale, routine=result.routine, appraisal=result.appraisal,
                inputs=result.inputs, vetoed=result.vetoed, veto_reasons=list(result.veto_reasons),
                grade=result.grade, rank_min_inputs=min_inputs, policy_id=policy_row.policy_id,
                policy_version=policy_row.version,
                explain={**result.explain, "policy": {"policy_id": policy_row.policy_id,
                                                      "version": policy_row.version, "node": policy_row.node}})
            differs = [name for name, value in values.items() if name != "explain" and (new or getattr(row, name) != value)]
            if new or differs or row.explain != values["explain"]:
                differs.append("explain")
            if differs:
                # Untouched rows are not written at all: no UPDATE, no new computed_at.
                for name in differs:
                    setattr(row, name, values[name])
                row.computed_at = _now()
                self._touched.add((kind, key, subject_id))
            if new or set(differs) & RANK_INPUTS:
                self._groups.add((kind, key, row.tier, row.subject_type))
            out.append((row, changed))
        s.flush()
        return out

    def _roll_up_many(self, rows: list[PeriodScore], period: Period) -> set[str]:
        """`_roll_up` for the changed rows of one tier at once: one read of the parents' stored
        inputs, one of the parents themselves, one flush. Returns the parents to recompute."""
        targets = []
        for row in rows:
            if row.subject_type != CHILD or row.node == self.ctx.home:
                continue
            parent = parent_of(row.node)
            if parent is not None and is_within(parent, self.ctx.home):
                targets.append((parent, row))
        if not targets:
            return set()
        parents = {parent for parent, _ in targets}
        kind, key = str(period.kind), period.key
        stored = {(c.parent_node, c.child_node): c for c in self.session.execute(select(ChildScore).where(
            ChildScore.parent_node.in_(parents), ChildScore.period_kind == kind, ChildScore.period == key)).scalars()}
        for parent, row in targets:
            upsert_child_score(self.session, parent, row.node, row.name, period, row.score, row.scale, row.inputs,
                               "stack", row.revision + 1, existing=stored.get((parent, row.node), MISSING),
                               flush=False)
        known = set(self.session.execute(select(Subject.subject_id).where(Subject.subject_id.in_(parents))).scalars())
        for parent in sorted(parents - known):
            self.session.add(Subject(subject_id=parent, node=parent, name=self.ctx.name_of(parent),
                                     subject_type=CHILD, tier=str(tier_of(parent)), created_at=_now()))
        self.session.flush()
        return parents

    # ranking
    def _rerank(self, kind: str, key: str, tier: str, subject_type: str) -> list[dict]:
        """Rank a peer group in the database (window functions) and write only the rows whose
        rank, ranked flag, peers, movement or position changed; returns those rows."""
        changed = rank_group(self.session, kind, key, tier, subject_type)
        if changed:
            metrics.SUBJECTS_RANKED.labels(tier, subject_type, kind).set(changed[0]["peers"])
        return changed

    def finish(self, trigger: str) -> int:
        """Re-rank the touched peer groups once each, publish every changed figure and one
        ranking_published per group whose ranking changed; returns the events staged."""
        self.session.flush()
        published = 0
        moved: dict[tuple[str, str, str, str], list[dict]] = {}
        for group in sorted(self._groups):
            kind, key, tier, subject_type = group
            changes = self._rerank(*group)
            if changes:
                moved.setdefault(group, []).extend(changes)
                # The following period's movement is measured against these ranks (its own
                # ranks do not depend on them, so this goes one period forward only).
                following = domain.next_period(Period(PeriodKind(kind), key))
                after = self._rerank(kind, following.key, tier, subject_type)
                if after:
                    moved.setdefault((kind, following.key, tier, subject_type), []).extend(after)
        if self._touched:
            for row in self._touched_rows():
                breathe()
                if self._publish_if_changed(row):
                    published += 1
        for group, changes in sorted(moved.items()):
            if self._publish_ranking(group, changes):
                published += 1
        self._store_child_revisions()
        self._stage_all()
        metrics.RECOMPUTE_SECONDS.labels(trigger).observe(time.perf_counter() - self.started)
        self._groups.clear()
        self._touched.clear()
        return published

    def _stage_all(self) -> None:
        """Add the events of this finish to the outbox, in one statement where it can."""
        staged, self._staged = self._staged, []
        if not staged:
            return
        add_many = getattr(self.ctx.outbox, "add_many", None)
        if add_many is not None:
            add_many(self.session, staged, correlation_id=self.correlation_id)
        else:
            for event, where in staged:
                self.ctx.outbox.add(self.session, event, correlation_id=self.correlation_id, **where)

    def _touched_rows(self) -> list[PeriodScore]:
        by_period: dict[tuple[str, str], list[str]] = {}
        for kind, key, subject_id in self._touched:
            by_period.setdefault((kind, key), []).append(subject_id)
        rows = []
        for (kind, key), ids in sorted(by_period.items()):
            rows.extend(self.session.execute(select(PeriodScore).options(defer(PeriodScore.explain)).where(
                PeriodScore.period_kind == kind, PeriodScore.period == key,
                PeriodScore.subject_id.in_(ids))).scalars())
        return sorted(rows, key=lambda r: (r.period_kind, r.period, r.tier, r.subject_type, r.subject_id))

    def _publish_ranking(self, group: tuple[str, str, str, str], changes: list[dict]) -> bool:
        kind, key, tier, subject_type = group
        latest: dict[str, dict] = {}
        for change in changes:  # a subject moved twice in one finish: its last state counts
            latest[change["subject_id"]] = change
        entries = [c for c in latest.values() if (c["rank"], c["ranked"], c["movement"]) != c["before"]]
        peers = changes[-1]["peers"]
        ranking = self.session.get(Ranking, group)
        if not entries and ranking is not None and ranking.peers == peers:
            return False  # only display positions moved: nothing a consumer keeps
        now = _now()
        if ranking is None:
            ranking = Ranking(period_kind=kind, period=key, tier=tier, subject_type=subject_type, version=0,
                              peers=peers, published_at=now)
            self.session.add(ranking)
        ranking.version, ranking.peers, ranking.published_at = ranking.version + 1, peers, now
        entries.sort(key=lambda c: (c["position"], c["subject_id"]))
        event = RankingPublished(
            scoring_node=self.ctx.home, period_kind=kind, period=key, tier=tier, subject_type=subject_type,
            version=ranking.version, peers=peers, computed_at=now,
            changes=[_rank_change(c, subject_type) for c in entries])
        self._staged.append((event, {}))
        metrics.RANKINGS_PUBLISHED.labels(kind).inc()
        return True

    def _publish_if_changed(self, row: PeriodScore) -> bool:
        figure = {"score": row.score, "scale": row.scale, "grade": row.grade, "vetoed": row.vetoed,
                  "veto_reasons": list(row.veto_reasons or []), "inputs": row.inputs, "name": row.name,
                  "policy": [row.policy_id, row.policy_version]}
        if row.published == figure:
            return False
        row.revision = (row.revision or 0) + 1
        row.published = figure
        event = ScorePublishedV2(
            scoring_node=self.ctx.home,
            subject=ScoredSubject(subject_id=row.subject_id, node=row.node, name=row.name,
                                  subject_type=row.subject_type),
            period_kind=row.period_kind, period=row.period, score=row.score, scale=row.scale, grade=row.grade,
            vetoed=row.vetoed, veto_reasons=list(row.veto_reasons or []), inputs=row.inputs,
            policy=PolicyRef(policy_id=row.policy_id, version=row.policy_version), revision=row.revision,
            computed_at=row.computed_at)
        self._staged.append((event, {}))
        if row.subject_type == CHILD and row.node == self.ctx.home:
            # This tier's own aggregate goes up to the parent tier (over federation).
            self._staged.append((event, {"exchange": UP_EXCHANGE,
                                         "routing_key": tier_routing_key("score_published", self.ctx.home)}))
        metrics.SCORES_PUBLISHED.labels(row.period_kind).inc()
        if row.subject_type == CHILD and row.node != self.ctx.home:
            parent = parent_of(row.node)
            if parent and is_within(parent, self.ctx.home):
                self._child_revisions.append({"p": parent, "c": row.node, "k": row.period_kind, "pe": row.period,
                                              "r": row.revision})
        return True

    def _store_child_revisions(self) -> None:
        """The parents' copies of this stack's own child figures carry their published revision."""
        revisions, self._child_revisions = self._child_revisions, []
        if revisions:
            table = ChildScore.__table__
            self.session.execute(update(table).where(
                table.c.parent_node == bindparam("p"), table.c.child_node == bindparam("c"),
                table.c.period_kind == bindparam("k"), table.c.period == bindparam("pe"),
                table.c.source == "stack").values(revision=bindparam("r")), revisions)
            for obj in list(self.session.identity_map.values()):  # loaded copies would show the old one
                if isinstance(obj, ChildScore):
                    self.session.expire(obj, ["revision"])


def _rank_change(change: dict, subject_type: str) -> RankChange:
    breathe()  # a city's ranking event may carry thousands
    return RankChange(subject=ScoredSubject(subject_id=change["subject_id"], node=change["node"], name=change["name"],
                                            subject_type=subject_type),
                      rank=change["rank"], ranked=change["ranked"], movement=change["movement"])


RANK_INPUTS = {"score", "inputs", "rank_min_inputs", "name"}
"""What a figure's place in its peer group depends on: only a change of these re-ranks it."""


def rank_group(session: Session, kind: str, key: str, tier: str, subject_type: str) -> list[dict]:
    """Rank one peer group in one statement and update the rows whose place changed.

    The same rules as `domain.rank_peers`: eligible rows (a score, a policy that ranks this
    period and tier, at least its minimum sample) ranked by score, highest first, ties
    sharing a rank (1, 1, 3) and listed by name then id (code point order); the rest after
    them; movement against the previous period's rank in the same group. Returns, for each
    changed row, its new place and its previous (rank, ranked, movement) as "before".
    """
    ps = PeriodScore.__table__
    cur, prev = ps.alias("cur"), ps.alias("prev")
    previous = Period(PeriodKind(kind), key).previous()
    collation = binary_collation(session)
    eligible = and_(cur.c.score.is_not(None), cur.c.rank_min_inputs.is_not(None),
                    cur.c.inputs >= cur.c.rank_min_inputs)
    band = case((eligible, 0), else_=1)
    new_rank = case((eligible, func.rank().over(partition_by=band, order_by=cur.c.score.desc())), else_=None)
    peers = func.sum(case((eligible, 1), else_=0)).over()
    position = func.row_number().over(order_by=[band, case((cur.c.score.is_(None), 1), else_=0), cur.c.score.desc(),
                                                cur.c.name.collate(collation), cur.c.subject_id.collate(collation)])
    ranked = select(
        cur.c.id, cur.c.subject_id, cur.c.node, cur.c.name, cur.c.rank, cur.c.ranked, cur.c.peers, cur.c.movement,
        cur.c.position, new_rank.label("new_rank"), case((eligible, True), else_=False).label("new_ranked"),
        peers.label("new_peers"), position.label("new_position"), prev.c.rank.label("prev_rank"),
    ).select_from(cur.outerjoin(prev, and_(
        prev.c.subject_id == cur.c.subject_id, prev.c.period_kind == kind, prev.c.period == previous.key,
        prev.c.tier == tier, prev.c.subject_type == subject_type))
    ).where(cur.c.period_kind == kind, cur.c.period == key, cur.c.tier == tier,
            cur.c.subject_type == subject_type).subquery("ranked")
    r = ranked.c
    new_movement = case((and_(r.new_rank.is_not(None), r.prev_rank.is_not(None)), r.prev_rank - r.new_rank),
                        else_=None)
    moved = or_(r.rank.is_distinct_from(r.new_rank), r.ranked.is_distinct_from(r.new_ranked),
                r.peers.is_distinct_from(r.new_peers), r.position.is_distinct_from(r.new_position),
                r.movement.is_distinct_from(new_movement))
    columns = (r.id, r.subject_id, r.node, r.name, r.rank, r.ranked, r.movement, r.position, r.new_rank,
               r.new_ranked, r.new_peers, r.new_position, new_movement.label("new_movement"))
    if is_postgres(session):
        # One statement ranks, writes the moved rows and returns them with their old places:
        # a city's 3,474 communities shifting by one after a move took 50 round trips (issue 11).
        rows = session.execute(update(ps).where(ps.c.id == r.id, moved).values(
            rank=r.new_rank, ranked=r.new_ranked, peers=r.new_peers, movement=new_movement,
            position=r.new_position).returning(*columns)).all()
    else:  # SQLite's RETURNING cannot name the ranked rows it updates from: select, then update
        rows = session.execute(select(*columns).where(moved)).all()
        if rows:
            session.execute(update(ps).where(ps.c.id == bindparam("row_id")).values(
                rank=bindparam("new_rank"), ranked=bindparam("new_ranked"), peers=bindparam("new_peers"),
                movement=bindparam("new_movement"), position=bindparam("new_position")),
                [{"row_id": x.id, "new_rank": x.new_rank, "new_ranked": bool(x.new_ranked),
                  "new_peers": int(x.new_peers or 0), "new_movement": x.new_movement,
                  "new_position": x.new_position} for x in rows])
    if not rows:
        return []
    changes = [{"id": x.id, "subject_id": x.subject_id, "node": x.node, "name": x.name,
                "rank": x.new_rank, "ranked": bool(x.new_ranked), "peers": int(x.new_peers or 0),
                "movement": x.new_movement, "position": x.new_position,
                # A row never ranked before (position 0) is news to consumers, even unranked.
                "before": None if not x.position else (x.rank, bool(x.ranked), x.movement)} for x in rows]
    changes.sort(key=lambda c: c["position"])  # RETURNING keeps no order
    # Rows of this group already loaded in the session would show their old places.
    ids = {c["id"] for c in changes}
    for obj in list(session.identity_map.values()):
        if isinstance(obj, PeriodScore) and obj.id in ids:
            session.expire(obj, ["rank", "ranked", "peers", "movement", "position"])
    return changes


MISSING = object()
"""`existing` for upsert_child_score: known not to be stored yet (no need to look)."""


def upsert_child_score(session: Session, parent: str, child: str, name: str, period: Period, score: float | None,
                       scale: int, inputs: int, source: str, revision: int, existing=None, flush: bool = True) -> bool:
    """Keep the latest figure per child: this stack's own always wins over an older copy of
    itself; from another source, only a higher revision replaces the stored one. `existing`:
    the stored row if the caller loaded it, MISSING if it knows there is none."""
    if existing is MISSING:
        row = None
    else:
        row = existing if existing is not None else session.get(ChildScore, (parent, child, str(period.kind),
                                                                             period.key))
    if row is None:
        session.add(ChildScore(parent_node=parent, child_node=child, period_kind=str(period.kind),
                               period=period.key, name=name, score=score, scale=scale, inputs=inputs,
                               source=source, revision=revision, updated_at=_now()))
        if flush:
            session.flush()
        return True
    if source != "stack" and row.source == source and revision <= row.revision:
        return False
    if (row.name, row.score, row.scale, row.inputs, row.source, row.revision) != (
            name, score, scale, inputs, source, revision):
        row.name, row.score, row.scale, row.inputs = name, score, scale, inputs
        row.source, row.revision, row.updated_at = source, revision, _now()
    if flush:
        session.flush()
    return True


def resolve_subject(session: Session, subject_id: str, field_name: str = "subject_id") -> Subject:
    subject = session.get(Subject, subject_id)
    if subject is None:
        alias = session.get(SubjectAlias, subject_id)
        subject = session.get(Subject, alias.subject_id) if alias else None
    if subject is None:
        raise UnknownReference(field_name, f"unknown subject {subject_id!r}: it has no inspection here yet")
    return subject


def score_row(session: Session, subject_id: str, period: Period) -> PeriodScore | None:
    return session.execute(select(PeriodScore).where(
        PeriodScore.subject_id == subject_id, PeriodScore.period_kind == str(period.kind),
        PeriodScore.period == period.key)).scalar_one_or_none()


def figure_out(row: PeriodScore) -> dict:
    return {"subject_id": row.subject_id, "node": row.node, "name": row.name, "subject_type": row.subject_type,
            "tier": row.tier, "period_kind": row.period_kind, "period": row.period, "score": row.score,
            "scale": row.scale, "routine": row.routine, "appraisal": row.appraisal, "grade": row.grade,
            "rank": row.rank, "peers": row.peers, "ranked": row.ranked, "movement": row.movement,
            "vetoed": row.vetoed, "veto_reasons": list(row.veto_reasons or []), "inputs": row.inputs,
            "policy": {"policy_id": row.policy_id, "version": row.policy_version}, "revision": row.revision,
            "computed_at": row.computed_at}


__all__ = ['Scorer', 'rank_group', 'RANK_INPUTS', 'upsert_child_score', 'resolve_subject', 'score_row', 'figure_out']
