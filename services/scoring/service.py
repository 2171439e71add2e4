"""Scoring service: period scores, composites, vetoes, rankings and the roll-up (考评排名).

Entrypoints only: parsing and validation happen in the shared HTTP layer, rules in
`domain`, use cases in `operations`. (The operator-endpoints mixin is imported as a module so that
`nameko run services.scoring.service` finds only this service class.)

Config: SCORING_POLICY — the shipped policy the home node starts with ("street", the
default, or "city") or the path of an office's own policy YAML file.
"""
from __future__ import annotations

from pathlib import Path

from nameko.extensions import DependencyProvider
from sqlalchemy.orm import Session

from services.contracts.tiers import CHILDREN_EXCHANGE
from services.plumbing import operator_endpoints
from services.plumbing.consumer import reliable_event_handler
from services.plumbing.db import Database
from services.plumbing.http import api
from services.plumbing.idempotency import apply_once
from services.plumbing.outbox import Outbox
from services.plumbing.providers import Identity
from services.scoring import operations as ops
from services.scoring.models import outbox as outbox_table, processed_events
from services.scoring.schemas import (AppraisalIn, AppraisalOut, ExplainOut, HistoryOut, HistoryQuery, PolicyOut,
                                      RankingOut, RankingQuery, RecomputeIn, VetoIn, VetoOut, VetoQuery,
                                      VetoRevokedOut, VetoRevokeIn)
from services.scoring.domain import Policy

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_POLICY = "street"


class PolicySeed(DependencyProvider):
    """At start, stores the configured shipped policy as the home node's version 1 (once)
    and fails the start if it does not fit this office (e.g. leaves a tier unranked)."""

    def start(self):
        config = self.container.config
        database = Database.of(self.container)
        identity = next(d for d in self.container.dependencies if isinstance(d, Identity))
        ctx = ops.Context(identity.identity.home, identity.identity.tree, outbox=None,
                          default_policy=str(config.get("SCORING_POLICY") or DEFAULT_POLICY))
        with Session(database.engine) as session, session.begin():
            ops.lock_scoring(session)
            ops.seed_default_policy(session, ctx)

    def get_dependency(self, worker_ctx):
        return str(self.container.config.get("SCORING_POLICY") or DEFAULT_POLICY)


class ScoringService(operator_endpoints.OperatorEndpoints):
    name = "scoring"

    db = Database(MIGRATIONS)
    outbox = Outbox(outbox_table)
    identity = Identity()
    default_policy = PolicySeed()

    def _ctx(self) -> ops.Context:
        return ops.Context(self.identity.home, self.identity.tree, self.outbox, self.default_policy)

    # --- events ---

    def _apply_once(self, body, event_type: str, consumer: str, apply):
        # One scorer at a time per stack: rankings are recomputed from shared rows.
        return apply_once(self.db, processed_events, body, event_type, f"scoring.{consumer}", apply,
                          before_claim=lambda session, _: ops.lock_scoring(session))

    @reliable_event_handler("inspection", "inspection_submitted")
    def on_inspection_submitted(self, body):
        return self._apply_once(body, "inspection_submitted", "on_inspection_submitted",
                                lambda session, envelope, payload: ops.apply_inspection(
                                    session, self._ctx(), str(envelope.event_id), payload))

    @reliable_event_handler("tasks", "ledger_figures_updated")
    def on_ledger_figures_updated(self, body):
        return self._apply_once(body, "ledger_figures_updated", "on_ledger_figures_updated",
                                lambda session, envelope, payload: ops.apply_ledger_figures(
                                    session, self._ctx(), str(envelope.event_id), payload))

    # --- tiers: child stacks' aggregates, over federation ---

    @reliable_event_handler("tier", "score_published", exchange=CHILDREN_EXCHANGE, routing_key="score_published.#")
    def on_child_score_published(self, body):
        return self._apply_once(body, "score_published", "on_child_score_published",
                                lambda session, envelope, payload: ops.apply_child_report(
                                    session, self._ctx(), envelope.occurred_at, payload))

    @api("GET", "/children/freshness",
         summary="下级上报时效 When this tier last heard from each child stack")
    def get_child_freshness(self, request):
        return ops.child_freshness(self.db.session, self._ctx(), expected=self.identity.child_stacks)

    # --- rankings and scores ---

    @api("GET", "/rankings", query=RankingQuery, response=RankingOut,
         summary="排名 Ranking of a tier's peers for a period (ties share a rank; small samples listed apart)")
    def get_ranking(self, request, query: RankingQuery):
        return RankingOut.model_validate(ops.ranking(self.db.session, self._ctx(), query.period,
                                                     str(query.tier) if query.tier else None,
                                                     str(query.subject_type)))

    @api("GET", "/subjects/<subject_id>/scores", query=HistoryQuery, response=HistoryOut,
         summary="得分历史 A subject's scores, period by period")
    def get_history(self, request, subject_id, query: HistoryQuery):
        return HistoryOut.model_validate(ops.history(self.db.session, subject_id,
                                                     str(query.period_kind) if query.period_kind else None))

    @api("GET", "/subjects/<subject_id>/scores/<period>", response=ExplainOut,
         summary="得分说明 Explain one score: inspections, weights, months, children, appraisal, vetoes")
    def explain_score(self, request, subject_id, period):
        return ExplainOut.model_validate(ops.explain(self.db.session, subject_id, period))

    # --- entries ---

    @api("POST", "/appraisals", body=AppraisalIn, response=AppraisalOut, status=201,
         summary="录入综合评议 Enter a comprehensive appraisal (综合评议 / 民主测评) for a composite period")
    def enter_appraisal(self, request, body: AppraisalIn):
        with self.db.transaction() as session:
            result = ops.add_appraisal(session, self._ctx(), body.subject_id, body.period, body.score,
                                       body.appraised_by, body.note)
        return AppraisalOut.model_validate(result)

    @api("POST", "/vetoes", body=VetoIn, response=VetoOut, status=201,
         summary="一票否决 Enter a veto: criticism notice (通报批评) or media exposure (媒体曝光)")
    def enter_veto(self, request, body: VetoIn):
        with self.db.transaction() as session:
            result = ops.add_veto(session, self._ctx(), body.subject_id, body.period, body.reason,
                                  body.issued_by, body.note, body.reference)
        return VetoOut.model_validate(result)

    @api("GET", "/vetoes", query=VetoQuery, response=list[VetoOut],
         summary="一票否决清单 List vetoes (by subject, by the period they count in; revoked ones on request)")
    def get_vetoes(self, request, query: VetoQuery):
        return [VetoOut.model_validate(v) for v in ops.list_vetoes(self.db.session, query.subject_id, query.period,
                                                                   query.include_revoked)]

    @api("POST", "/vetoes/<veto_id>/revoke", body=VetoRevokeIn, response=VetoRevokedOut,
         summary="撤销一票否决 Revoke a veto (appeal upheld, notice withdrawn): kept on record, scores recomputed")
    def revoke_veto(self, request, veto_id, body: VetoRevokeIn):
        with self.db.transaction() as session:
            result = ops.revoke_veto(session, self._ctx(), veto_id, body.revoked_by, body.reason)
        return VetoRevokedOut.model_validate(result)

    # --- policies ---

    @api("GET", "/policies/<node>", response=PolicyOut,
         summary="考评办法 The scoring policy in force for a node (its own or inherited)")
    def get_policy(self, request, node):
        return PolicyOut.model_validate(ops.get_policy(self.db.session, self._ctx(), node))

    @api("GET", "/policies/<node>/versions", response=list[PolicyOut],
         summary="考评办法版本 Every version of a node's own policy")
    def get_policy_versions(self, request, node):
        return [PolicyOut.model_validate(v) for v in ops.policy_versions(self.db.session, self._ctx(), node)]

    @api("PUT", "/policies/<node>", body=Policy, response=PolicyOut, status=201,
         summary="修订考评办法 Adopt a new policy version for a node (old versions are kept)")
    def put_policy(self, request, node, body: Policy):
        changed_by = request.headers.get("X-Changed-By") or "api"
        with self.db.transaction() as session:
            result = ops.update_policy(session, self._ctx(), node, body.model_dump(mode="json"), changed_by[:100])
        return PolicyOut.model_validate(result)

    @api("POST", "/recompute", body=RecomputeIn,
         summary="重新计算 Recompute every figure of a period (e.g. after a policy change for a closed period)")
    def recompute(self, request, body: RecomputeIn):
        with self.db.transaction() as session:
            return ops.recompute(session, self._ctx(), body.period)
