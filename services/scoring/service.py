"""Scoring service: period scores, composites, vetoes, rankings and the roll-up (考评排名).

Entrypoints only: parsing and validation happen in the shared HTTP layer, rules in
`domain`, use cases in `operations`. (The operator-endpoints mixin is imported as a module so that
`nameko run services.scoring.service` finds only this service class.)

Access (issue 10): every route but the operator endpoints needs a signed-in caller; node
rules are applied in `operations` (a caller reads its own subtree; appraisals, vetoes,
policies and recomputes are for administrators of the owning node; revoking a veto and
changing a policy take a second administrator, through /approvals).

Config: SCORING_POLICY — the shipped policy the home node starts with ("street", the
default, or "city") or the path of an office's own policy YAML file.
"""
from __future__ import annotations

from pathlib import Path

from nameko.extensions import DependencyProvider
from sqlalchemy.orm import Session

from services.contracts.tiers import CHILDREN_EXCHANGE
from services.plumbing import operator_endpoints
from services.plumbing.auth import ADMINISTRATOR, INSPECTOR, VIEWER, signed_in
from services.plumbing.consumer import batching_event_handler, reliable_event_handler
from services.plumbing.db import Database
from services.plumbing.http import api, json_text_response
from services.plumbing.idempotency import apply_batch_once, apply_once
from services.plumbing.outbox import Outbox
from services.plumbing.providers import Identity
from services.plumbing.timers import ConfigurableTimer
from services.scoring import cases, indicators, operations as ops
from services.scoring.models import outbox as outbox_table, processed_events
from services.scoring.schemas import (AppraisalIn, AppraisalOut, ApprovalDecisionIn, ApprovalOut, ApprovalQuery,
                                      ExplainOut, FreshnessOut, HistoryOut, HistoryQuery, PolicyOut, RankingOut,
                                      RankingQuery, RecomputeIn, RecomputeLogOut, RecomputeOut, RecomputeQuery,
                                      VetoIn, VetoOut, VetoQuery, VetoRevokeIn)
from services.scoring.domain import Policy

MIGRATIONS = Path(__file__).parent / "migrations"
OFFICE = signed_in(ADMINISTRATOR, INSPECTOR, VIEWER)  # the office's own roles, not its subjects' contacts
READERS = signed_in()  # any role; the use case limits what each caller sees to its subtree
ADMINS = signed_in(ADMINISTRATOR)  # of the owning node, checked in the use case
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


class RankingCacheProvider(DependencyProvider):
    """The stack's cache of serialised ranking figures (operations.ranking_cache), one per
    container. SCORING_RANKING_CACHE_ROWS bounds it (figures over all groups; 0: none)."""

    def setup(self):
        self.cache = ops.RankingCache(int(self.container.config.get("SCORING_RANKING_CACHE_ROWS", 50_000)))

    def get_dependency(self, worker_ctx):
        return self.cache


class ScoringService(operator_endpoints.OperatorEndpoints):
    name = "scoring"

    db = Database(MIGRATIONS)
    outbox = Outbox(outbox_table)
    identity = Identity()
    default_policy = PolicySeed()
    ranking_cache = RankingCacheProvider()

    def _ctx(self) -> ops.Context:
        return ops.Context(self.identity.home, self.identity.tree, self.outbox, self.default_policy)

    # --- events ---

    def _apply_once(self, body, event_type: str, consumer: str, apply):
        # One scorer at a time per stack: rankings are recomputed from shared rows.
        return apply_once(self.db, processed_events, body, event_type, f"scoring.{consumer}", apply,
                          before_claim=lambda session, _: ops.lock_scoring(session))

    def _apply_batch(self, bodies, event_type: str, consumer: str, apply_many):
        """Apply a batch in one transaction under the scoring lock (taken before the claims,
        so that two batches never interleave their re-rankings)."""
        return apply_batch_once(self.db, processed_events, bodies, event_type, f"scoring.{consumer}", apply_many,
                                before_claim=ops.lock_scoring)

    @batching_event_handler("inspection", "inspection_submitted")
    def on_inspection_submitted(self, bodies):
        """Takes a batch (a list of message bodies); returns per event DUPLICATE or, counted at
        the first new one, the events the batch published."""
        def apply_many(session, events):
            published = ops.apply_inspections(session, self._ctx(), [(str(e.event_id), p) for e, p in events])
            return [published] + [0] * (len(events) - 1)
        return self._apply_batch(bodies, "inspection_submitted", "on_inspection_submitted", apply_many)

    @reliable_event_handler("inspection", "inspection_released")
    def on_inspection_released(self, body):
        return self._apply_once(body, "inspection_released", "on_inspection_released",
                                lambda session, envelope, payload: ops.apply_inspection_released(
                                    session, str(envelope.event_id), payload))

    @reliable_event_handler("intake", "case_handled")
    def on_case_handled(self, body):
        return self._apply_once(body, "case_handled", "on_case_handled",
                                lambda session, envelope, payload: cases.apply_case_handled(
                                    session, self._ctx(), str(envelope.event_id), payload))

    @reliable_event_handler("indicators", "satisfaction_published")
    def on_satisfaction_published(self, body):
        """A survey wave's rate for an area: a `satisfaction_survey` input where the policy weighs it."""
        return self._apply_once(body, "satisfaction_published", "on_satisfaction_published",
                                lambda session, envelope, payload: indicators.apply_satisfaction_published(
                                    session, self._ctx(), str(envelope.event_id), payload))

    @reliable_event_handler("indicators", "vector_verdict_published")
    def on_vector_verdict_published(self, body):
        """An area's vector density verdict for a month: a veto where the policy says so."""
        return self._apply_once(body, "vector_verdict_published", "on_vector_verdict_published",
                                lambda session, envelope, payload: indicators.apply_vector_verdict_published(
                                    session, self._ctx(), str(envelope.event_id), payload))

    @batching_event_handler("tasks", "ledger_figures_updated")
    def on_ledger_figures_updated(self, bodies):
        """Takes a batch (a list of message bodies); returns per event DUPLICATE or, counted at
        the first new one, the events the batch published."""
        def apply_many(session, events):
            published = ops.apply_ledger_figures_many(session, self._ctx(), [(str(e.event_id), p) for e, p in events])
            return [published] + [0] * (len(events) - 1)
        return self._apply_batch(bodies, "ledger_figures_updated", "on_ledger_figures_updated", apply_many)

    # --- tiers: child stacks' aggregates, over federation ---

    @batching_event_handler("tier", "score_published", exchange=CHILDREN_EXCHANGE, routing_key="score_published.#")
    def on_child_score_published(self, bodies):
        """Takes a batch of child stacks' score_published (v1 or v2); returns whether each changed anything."""
        return self._apply_batch(bodies, "score_published", "on_child_score_published",
                                 lambda session, events: ops.apply_child_reports(
                                     session, self._ctx(), [(e.occurred_at, p) for e, p in events]))

    @reliable_event_handler("tier", "stack_heartbeat", exchange=CHILDREN_EXCHANGE, routing_key="stack_heartbeat.#")
    def on_child_stack_heartbeat(self, body):
        # Not under the scoring lock: it changes no figure, only when the child was last heard from.
        return apply_once(self.db, processed_events, body, "stack_heartbeat", "scoring.on_child_stack_heartbeat",
                          lambda session, envelope, payload: ops.apply_child_heartbeat(
                              session, self._ctx(), envelope.occurred_at, payload))

    @ConfigurableTimer.decorator("SCORING_HEARTBEAT_SECONDS", 300)
    def send_heartbeat(self):
        with self.db.transaction() as session:
            ops.send_heartbeat(session, self._ctx())

    @api("GET", "/children/freshness", response=list[FreshnessOut], access=OFFICE,
         summary="下级上报时效 When this tier last heard from each child stack")
    def get_child_freshness(self, request, principal):
        return ops.child_freshness(self.db.session, self._ctx(), principal, expected=self.identity.child_stacks)

    @ConfigurableTimer.decorator("SCORING_FRESHNESS_SECONDS", 60)
    def refresh_child_freshness(self):
        # A child silent past the policy's limit is published as such (the bulletin marks its
        # figures), and one heard again as current.
        with self.db.transaction() as session:
            ops.publish_staleness_changes(session, self._ctx())
        # The gauge behind the silent-child alert lives in memory: after a restart it must come
        # back from the stored last-heard times, not wait for a child that may stay silent.
        ops.child_freshness(self.db.session, self._ctx(), expected=self.identity.child_stacks)

    # --- rankings and scores ---

    @api("GET", "/rankings", query=RankingQuery, response=RankingOut, access=READERS,
         summary="排名 Ranking of a tier's peers for a period (ties share a rank; small samples listed apart; "
                 "only the rows of the caller's own subtree)")
    def get_ranking(self, request, query: RankingQuery, principal):
        return json_text_response(ops.ranking_json(self.db.session, self._ctx(), principal, query.period,
                                                   str(query.tier) if query.tier else None,
                                                   str(query.subject_type), self.ranking_cache))

    @api("GET", "/subjects/<subject_id>/scores", query=HistoryQuery, response=HistoryOut, access=READERS,
         summary="得分历史 A subject's scores, period by period")
    def get_history(self, request, subject_id, query: HistoryQuery, principal):
        return HistoryOut.model_validate(ops.history(self.db.session, self._ctx(), principal, subject_id,
                                                     str(query.period_kind) if query.period_kind else None))

    @api("GET", "/subjects/<subject_id>/scores/<period>", response=ExplainOut, access=READERS,
         summary="得分说明 Explain one score: inspections, weights, months, children, appraisal, vetoes, "
                 "recomputes (暗访 withheld from the subject until released, its inspectors always)")
    def explain_score(self, request, subject_id, period, principal):
        return ExplainOut.model_validate(ops.explain(self.db.session, self._ctx(), principal, subject_id, period))

    # --- entries ---

    @api("POST", "/appraisals", body=AppraisalIn, response=AppraisalOut, status=201, access=ADMINS,
         summary="录入综合评议 Enter a comprehensive appraisal (综合评议 / 民主测评) for a composite period")
    def enter_appraisal(self, request, body: AppraisalIn, principal):
        with self.db.transaction() as session:
            result = ops.add_appraisal(session, self._ctx(), principal, body.subject_id, body.period, body.score,
                                       body.note)
        return AppraisalOut.model_validate(result)

    @api("POST", "/vetoes", body=VetoIn, response=VetoOut, status=201, access=ADMINS,
         summary="一票否决 Enter a veto: criticism notice (通报批评) or media exposure (媒体曝光)")
    def enter_veto(self, request, body: VetoIn, principal):
        with self.db.transaction() as session:
            result = ops.add_veto(session, self._ctx(), principal, body.subject_id, body.period, body.reason,
                                  body.note, body.reference)
        return VetoOut.model_validate(result)

    @api("GET", "/vetoes", query=VetoQuery, response=list[VetoOut], access=READERS,
         summary="一票否决清单 List vetoes (by subject, by the period they count in; revoked ones on request)")
    def get_vetoes(self, request, query: VetoQuery, principal):
        return [VetoOut.model_validate(v) for v in ops.list_vetoes(
            self.db.session, self._ctx(), principal, query.subject_id, query.period, query.include_revoked)]

    @api("POST", "/vetoes/<veto_id>/revoke", body=VetoRevokeIn, response=ApprovalOut, status=202, access=ADMINS,
         summary="申请撤销一票否决 Propose revoking a veto (appeal upheld, notice withdrawn); it takes effect "
                 "when another administrator approves it (POST /approvals/<id>/approve)")
    def revoke_veto(self, request, veto_id, body: VetoRevokeIn, principal):
        with self.db.transaction() as session:
            result = ops.propose_veto_revocation(session, self._ctx(), principal, veto_id, body.reason)
        return ApprovalOut.model_validate(result)

    # --- two administrators ---

    @api("GET", "/approvals", query=ApprovalQuery, response=list[ApprovalOut], access=ADMINS,
         summary="待审批 Proposals (veto revocations, policy changes) for the nodes the caller administers")
    def get_approvals(self, request, query: ApprovalQuery, principal):
        return [ApprovalOut.model_validate(a) for a in ops.list_approvals(
            self.db.session, self._ctx(), principal, query.status, query.kind, query.limit, query.offset)]

    @api("POST", "/approvals/<approval_id>/approve", body=ApprovalDecisionIn, response=ApprovalOut, access=ADMINS,
         summary="批准 Approve a proposal: a second administrator of the owning node (never the proposer); "
                 "the change takes effect now")
    def approve(self, request, approval_id, body: ApprovalDecisionIn, principal):
        with self.db.transaction() as session:
            result = ops.approve(session, self._ctx(), principal, approval_id, body.note)
        return ApprovalOut.model_validate(result)

    @api("POST", "/approvals/<approval_id>/reject", body=ApprovalDecisionIn, response=ApprovalOut, access=ADMINS,
         summary="驳回 Reject a proposal (or withdraw one's own): nothing changes, it stays on record")
    def reject(self, request, approval_id, body: ApprovalDecisionIn, principal):
        with self.db.transaction() as session:
            result = ops.reject(session, self._ctx(), principal, approval_id, body.note)
        return ApprovalOut.model_validate(result)

    # --- policies ---

    @api("GET", "/policies/<node>", response=PolicyOut, access=READERS,
         summary="考评办法 The scoring policy in force for a node (its own or inherited)")
    def get_policy(self, request, node, principal):
        return PolicyOut.model_validate(ops.get_policy(self.db.session, self._ctx(), node, principal))

    @api("GET", "/policies/<node>/versions", response=list[PolicyOut], access=READERS,
         summary="考评办法版本 Every version of a node's own policy")
    def get_policy_versions(self, request, node, principal):
        return [PolicyOut.model_validate(v) for v in ops.policy_versions(self.db.session, self._ctx(), node,
                                                                         principal)]

    @api("PUT", "/policies/<node>", body=Policy, response=ApprovalOut, status=202, access=ADMINS,
         summary="修订考评办法 Propose a new policy version for a node; adopted (old versions kept) when "
                 "another administrator of the node approves it")
    def put_policy(self, request, node, body: Policy, principal):
        with self.db.transaction() as session:
            result = ops.propose_policy(session, self._ctx(), principal, node, body.model_dump(mode="json"))
        return ApprovalOut.model_validate(result)

    # --- recomputation ---

    @api("POST", "/recompute", body=RecomputeIn, response=RecomputeOut, access=ADMINS,
         summary="重新计算 Recompute every figure of a period; a period that has ended needs a reason "
                 "(kept in the recompute log)")
    def recompute(self, request, body: RecomputeIn, principal):
        with self.db.transaction() as session:
            result = ops.recompute(session, self._ctx(), principal, body.period, body.reason)
        return RecomputeOut.model_validate(result)

    @api("GET", "/recomputes", query=RecomputeQuery, response=list[RecomputeLogOut], access=OFFICE,
         summary="重新计算记录 The recompute log: who recomputed which period, when and why (newest first)")
    def get_recomputes(self, request, query: RecomputeQuery, principal):
        return [RecomputeLogOut.model_validate(r) for r in ops.list_recomputes(
            self.db.session, self._ctx(), principal, query.period, query.limit, query.offset)]
