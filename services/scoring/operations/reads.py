"""Reading figures: rankings, a subject's history, a score's explanation."""
from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import String, cast, func, literal_column, null, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session, defer

from services.contracts.errors import UnknownReference
from services.contracts.nodes import Tier
from services.contracts.periods import Period
from services.plumbing.cooperative import breathe
from services.plumbing.sql import is_postgres
from services.scoring import domain, metrics
from services.scoring.models import ChildFreshness, PeriodScore, RecomputeLog, ReleasedInspection, ScoreInputRow, Subject
from services.scoring.operations.context import (CHILD, UNANNOUNCED, PrincipalLike, Context, require_in_stack,
                                                 on_inspecting_side, _now)
from services.scoring.operations.scorer import Scorer, resolve_subject, score_row, figure_out
from services.scoring.operations.children import silence
from services.scoring.operations.embargo import HELD_BACK, as_seen, secrets_for
from services.scoring.operations.entries import recompute_out
from services.scoring.operations.ranking_cache import RankingCache
from services.scoring.schemas import FigureOut, UnrankedOut


# A figure's explanation and last published copy are JSON documents a list never shows: a
# city's year ranking carried 38 MiB of them, decoded on every GET /rankings (issue 11).
FIGURE_ONLY = (defer(PeriodScore.explain), defer(PeriodScore.published))
# The same as columns, for reads that need no objects (a ranking's changed rows).
_FIGURE_COLUMNS = [c for c in PeriodScore.__table__.c if c.key not in ("explain", "published")]


def mark_stale(session: Session, ctx: Context, figures: list[dict], now: datetime | None = None) -> list[dict]:
    """Mark each figure of a child stack (its report is this tier's input for it) whose link
    has been silent longer than the policy's `rollup.stale_after_hours`: a figure that may
    no longer be true is shown as such, not as current (issue 12)."""
    if not figures:
        return figures
    # Every child stack's row (a handful, one per CHILD_STACKS entry) rather than an IN over
    # every figure's node: a city's ranking has 3,474 of them (issue 11's read benchmark).
    heard = {r.child_node: r for r in session.execute(select(ChildFreshness)).scalars()}
    if not heard:
        return figures
    now, scorer = now or _now(), Scorer(session, ctx)
    for figure in figures:
        row = heard.get(figure["node"])
        if row is None or figure["subject_type"] != CHILD:
            continue  # not the child stack's own unit
        _, policy = scorer.policy_for(session.get(Subject, figure["subject_id"]))
        reason = silence(row, policy.rollup.stale_after_hours, now)
        if reason is not None:
            figure["stale"], figure["stale_reason"] = True, reason
    return figures


def ranking_json(session: Session, ctx: Context, principal: PrincipalLike, period_key: str, tier: str | None,
                 subject_type: str, cache: RankingCache | None = None) -> str:
    """A tier's ranking for a period as the JSON document GET /rankings answers (RankingOut),
    as this reader may see it: the stored ranking (`stored_ranking_json`, cached), except that
    a reader on the inspected side of an unreleased 暗访 sees the figures it touches as if
    it had not happened (`embargo`)."""
    answer = stored_ranking_json(session, ctx, principal, period_key, tier, subject_type, cache)
    period = domain.parse_period(period_key, "query.period")
    secrets = secrets_for(session, principal, period)
    return _embargoed(session, ctx, principal, answer, secrets) if secrets else answer


def _embargoed(session: Session, ctx: Context, principal: PrincipalLike, answer: str, secrets: list) -> str:
    """The ranking document with each figure as `as_seen` shows it to this reader, re-sorted."""
    doc = json.loads(answer)
    figures = doc["ranking"] + doc["below_minimum_sample"]
    was = {f["subject_id"]: (f.pop("why_unranked", None), f["ranked"]) for f in figures}
    seen = as_seen(session, ctx, principal, figures, secrets=secrets)
    doc["peers"] += sum(int(f["ranked"]) for f in seen) - sum(int(r) for _, r in was.values())
    ranked = sorted((f for f in seen if f["ranked"]), key=lambda f: (f["rank"], f["name"], f["subject_id"]))
    below = []
    for f in seen:
        if f["ranked"]:
            continue
        minimum = f.pop("rank_min_inputs", None)
        if f.get("held_back"):
            f["why_unranked"] = HELD_BACK
        elif f["score"] is None:
            f["why_unranked"] = "no score in this period"
        elif minimum is not None:
            f["why_unranked"] = f"{f['inputs']} inputs, below the minimum sample of {minimum} (样本不足)"
        else:
            f["why_unranked"] = was[f["subject_id"]][0] or "no score in this period"
        below.append(f)
    for f in ranked:
        f.pop("rank_min_inputs", None)
    doc["ranking"] = [json.loads(FigureOut.model_validate(f).model_dump_json()) for f in ranked]
    doc["below_minimum_sample"] = [json.loads(UnrankedOut.model_validate(f).model_dump_json()) for f in below]
    return json.dumps(doc, ensure_ascii=False)


def stored_ranking_json(session: Session, ctx: Context, principal: PrincipalLike, period_key: str, tier: str | None,
                        subject_type: str, cache: RankingCache | None = None) -> str:
    """A tier's ranking for a period as the JSON document GET /rankings answers (RankingOut);
    the caller sees the rows of its own subtree only (a community sees its own rank, not its
    peers' figures). `peers` counts every ranked peer. With a `cache`, an answer made from
    exactly the rows the group has now is given again, and otherwise figures whose row is
    unchanged since the cache last serialised it are not read or serialised again."""
    period = domain.parse_period(period_key, "query.period")
    require_in_stack(ctx, principal, "query.tier")
    if tier is None:
        below = domain.TIER_ORDER.index(ctx.home_tier) + 1
        tier = str(domain.TIER_ORDER[min(below, len(domain.TIER_ORDER) - 1)])
    in_group = (PeriodScore.period_kind == str(period.kind), PeriodScore.period == period.key,
                PeriodScore.tier == tier, PeriodScore.subject_type == subject_type)
    postgres = is_postgres(session)
    seen = principal.seen_prefixes()  # the stored nodes are normalised codes
    heard = {r.child_node: r for r in session.execute(select(ChildFreshness)).scalars()} if subject_type == CHILD else {}
    # A kept answer has no row of a child stack known then (see `live` below); one heard of
    # since may have gone silent, so the answer is kept under the stacks known.
    answer_key = ((str(period.kind), period.key, tier, subject_type), seen, tuple(sorted(heard)))
    if cache is not None and postgres:
        # One row back: the group's fingerprint as RankingCache.fingerprint computes it.
        fingerprint = session.execute(select(func.md5(func.string_agg(
            cast(PeriodScore.id, String) + ":" + literal_column("xmin::text"),
            aggregate_order_by(literal_column("','"), PeriodScore.position, PeriodScore.subject_id))))
            .where(*in_group)).scalar()
        if (answer := cache.document(answer_key, fingerprint)) is not None:
            metrics.RANKING_ANSWERS.labels("cache").inc()
            return answer
    version = literal_column("xmin::text") if postgres else null()
    listing = session.execute(select(
        PeriodScore.id, version, PeriodScore.node, PeriodScore.ranked, PeriodScore.score.is_(None),
        PeriodScore.rank_min_inputs.is_(None)).where(*in_group).order_by(PeriodScore.position, PeriodScore.subject_id)).all()
    peers = sum(1 for row in listing if row[3])

    # A figure is a function of its row, except where it reads the time (a child stack's
    # silence) or the policy in force (why a scored, sample-less row is unranked): those are
    # made on every read, the rest come from the cache.
    def live(node, ranked, unscored, no_minimum) -> bool:
        return node in heard or (not ranked and not unscored and no_minimum)

    cached, loaded = [(row_id, ver) for row_id, ver, *flags in listing if not live(*flags)], []

    def load(ids: list[int]) -> dict[int, str]:
        loaded.extend(ids)
        return _serialised(_figures(session, ctx, period, tier, _figure_rows(session, in_group, ids)))

    texts = (cache if cache is not None else RankingCache(0)).figures(
        (str(period.kind), period.key, tier, subject_type), cached, load)
    shown = [(row_id, ranked) for row_id, _, node, ranked, *flags in listing if node.startswith(seen)]
    uncached = {row_id for row_id, _, *flags in listing if live(*flags)}
    if made_now := [row_id for row_id, _ in shown if row_id in uncached]:
        figures = _figures(session, ctx, period, tier, _figure_rows(session, in_group, made_now))
        texts.update(_serialised(dict(zip(figures, mark_stale(session, ctx, list(figures.values()))))))
    metrics.RANKING_FIGURES.labels("cache").inc(len(cached) - len(loaded))
    metrics.RANKING_FIGURES.labels("database").inc(len(loaded) + len(made_now))
    head = json.dumps({"period": period.key, "period_kind": str(period.kind), "tier": tier,
                       "subject_type": subject_type, "scoring_node": ctx.home, "peers": peers}, ensure_ascii=False)
    answer = (head[:-1] + ', "ranking": [' + ", ".join(texts[row_id] for row_id, ranked in shown if ranked)
              + '], "below_minimum_sample": [' + ", ".join(texts[row_id] for row_id, ranked in shown if not ranked)
              + "]}")
    metrics.RANKING_ANSWERS.labels("built").inc()
    if cache is not None and not made_now:  # nothing in it read the clock or the policy in force
        cache.keep_document(answer_key, RankingCache.fingerprint((row_id, ver) for row_id, ver, *_ in listing), answer)
    return answer


_FEW = 200  # up to this many ids are asked for by id; more, and the whole group is read once


def _figure_rows(session: Session, in_group: tuple, ids: list[int]) -> list:
    stmt = select(*_FIGURE_COLUMNS)
    if len(ids) <= _FEW:
        return session.execute(stmt.where(PeriodScore.id.in_(ids))).all()
    wanted = set(ids)
    return [row for row in session.execute(stmt.where(*in_group)).all() if row.id in wanted]


def _figures(session: Session, ctx: Context, period: Period, tier: str, rows: list) -> dict[int, dict]:
    """Each row's figure as the API shows it, by row id; an unranked one says why."""
    out, scorer = {}, Scorer(session, ctx)
    for r in rows:
        breathe()  # thousands of rows moved by a re-ranking: let the cached answers go out meanwhile
        figure = out[r.id] = figure_out(r)
        if r.ranked:
            continue
        if r.score is None:
            figure["why_unranked"] = "no score in this period"
        elif r.rank_min_inputs is not None:  # the minimum sample the figure was ranked against
            figure["why_unranked"] = (f"{r.inputs} inputs, below the minimum sample of {r.rank_min_inputs} "
                                      f"(样本不足)")
        else:
            _, policy = scorer.policy_for(session.get(Subject, r.subject_id))
            rule = policy.ranking.tiers.get(Tier(tier))
            if rule is None or period.kind not in policy.ranking.periods:
                figure["why_unranked"] = f"policy {policy.policy_id} does not rank {period.kind} for tier {tier}"
            else:
                figure["why_unranked"] = (f"{r.inputs} inputs, below the minimum sample of {rule.min_inspections} "
                                          f"(样本不足)")
    return out


def _serialised(figures: dict[int, dict]) -> dict[int, str]:
    """The JSON text of each figure, through the response's own models (as the API would)."""
    out = {}
    for row_id, figure in figures.items():
        breathe()
        out[row_id] = (UnrankedOut if "why_unranked" in figure else FigureOut).model_validate(figure).model_dump_json()
    return out


def _readable_subject(session: Session, ctx: Context, principal: PrincipalLike, subject_id: str) -> Subject:
    require_in_stack(ctx, principal, "subject_id")
    subject = resolve_subject(session, subject_id)
    principal.require_sees(subject.node, "subject_id")
    return subject


def history(session: Session, ctx: Context, principal: PrincipalLike, subject_id: str,
            period_kind: str | None) -> dict:
    subject = _readable_subject(session, ctx, principal, subject_id)
    stmt = select(PeriodScore).options(*FIGURE_ONLY).where(PeriodScore.subject_id == subject.subject_id)
    if period_kind:
        stmt = stmt.where(PeriodScore.period_kind == period_kind)
    rows = session.execute(stmt).scalars().all()
    order = {str(k): i for i, k in enumerate(domain.KIND_ORDER)}
    rows.sort(key=lambda r: (order[r.period_kind], r.period))
    # A reader on the inspected side sees no figure move for a 暗访 not yet released (embargo).
    figures = as_seen(session, ctx, principal, [figure_out(r) for r in rows],
                      secrets=secrets_for(session, principal, within=subject.node) if rows else [])
    return {"subject_id": subject.subject_id, "node": subject.node, "name": subject.name,
            "subject_type": subject.subject_type, "tier": subject.tier, "scores": mark_stale(session, ctx, figures)}


def visible_inspections(session: Session, principal: PrincipalLike, entries: list[dict]) -> list[dict]:
    """The inspections behind a score as the caller may see them. The inspecting side sees
    every one with its inspectors. Anyone else never sees an unannounced inspection's (暗访)
    inspectors or note, nor the inspection at all until its office has released it."""
    ids = [e.get("inspection_id") for e in entries]
    inputs = {r.inspection_id: r for r in session.execute(
        select(ScoreInputRow).where(ScoreInputRow.inspection_id.in_(ids))).scalars()} if ids else {}
    released = set(session.execute(select(ReleasedInspection.inspection_id).where(
        ReleasedInspection.inspection_id.in_(ids))).scalars()) if ids else set()
    out = []
    for entry in entries:
        source = inputs.get(entry.get("inspection_id"))
        node = source.inspecting_node if source else None
        inspecting = on_inspecting_side(principal, node)
        secret = entry.get("kind") == UNANNOUNCED or (source is not None and source.kind == UNANNOUNCED)
        if secret and not inspecting and entry.get("inspection_id") not in released:
            continue  # embargoed: the subject must not learn of it before the office releases it
        shown = {k: v for k, v in entry.items() if k not in ("inspectors", "note")}
        shown["inspecting_node"] = node
        if inspecting or not secret:
            shown["inspectors"] = list(source.inspectors or []) if source else []
            if "note" in entry:
                shown["note"] = entry["note"]
        else:
            shown["inspectors"] = None  # withheld from the subject side
        out.append(shown)
    return out


def explain(session: Session, ctx: Context, principal: PrincipalLike, subject_id: str, period_key: str) -> dict:
    period = domain.parse_period(period_key)
    subject = _readable_subject(session, ctx, principal, subject_id)
    row = score_row(session, subject.subject_id, period)
    if row is None:
        raise UnknownReference("period", f"no score for {subject.subject_id} in {period.key}")
    # A reader on the inspected side sees the figure as if an unreleased 暗访 had not happened
    # (or held back, see embargo); none left: no score, as before the visit.
    seen = as_seen(session, ctx, principal, [figure_out(row)], with_explain=True,
                   secrets=secrets_for(session, principal, period, within=subject.node))
    if not seen:
        raise UnknownReference("period", f"no score for {subject.subject_id} in {period.key}")
    [figure] = seen
    if figure.get("held_back"):
        detail = {"held_back": HELD_BACK}
    else:
        detail = dict(figure.pop("explain", None) or row.explain or {})
        detail["inspections"] = visible_inspections(session, principal, list(detail.get("inspections") or []))
    logged = session.execute(select(RecomputeLog).where(
        RecomputeLog.period_kind == str(period.kind), RecomputeLog.period == period.key,
        (RecomputeLog.subject_id.is_(None)) | (RecomputeLog.subject_id == subject.subject_id))
        .order_by(RecomputeLog.created_at, RecomputeLog.id)).scalars()
    detail["recomputes"] = [{k: v.isoformat() if isinstance(v, datetime) else v for k, v in recompute_out(r).items()}
                            for r in logged]
    [figure] = mark_stale(session, ctx, [figure])
    return {**figure, "explain": detail}


__all__ = ['ranking_json', 'stored_ranking_json', 'RankingCache', '_readable_subject', 'history', 'visible_inspections', 'explain']
