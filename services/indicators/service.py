"""Indicators service: the standard's measured indicators beside the checklist scores —
vector density (病媒生物密度, 四害) and residents' satisfaction (群众满意率).

Entrypoints only: parsing and validation happen in the shared HTTP layer, rules in
`domain`, use cases in `operations`. (The operator-endpoints mixin is imported as a module
so that `nameko run services.indicators.service` finds only this service class.)

Who may do what (the actor recorded comes from the access token):
  reads                                   the office's roles (administrator, inspector, viewer), own subtree
  density forms, survey waves, interviews an inspector or administrator of the area
  control levels, questionnaires          an administrator of the node
  POST /public/survey-answers             anonymous: a sampled resident's one-time code; rate-limited
                                          per client address (INDICATORS_PUBLIC_*)

Config (infra/nameko.yaml): INDICATORS_VECTOR_TOLERANCE (3: the fourth species may reach this
many times its level), INDICATORS_PUBLIC_MAX_REQUESTS (30) and INDICATORS_PUBLIC_MAX_FAILURES
(10) per client address within INDICATORS_PUBLIC_WINDOW_SECONDS (600),
INDICATORS_TRUST_FORWARDED_FOR (false; true only behind a reverse proxy that sets it).
"""
from __future__ import annotations

from pathlib import Path

from services.contracts.errors import DomainError
from services.contracts.tiers import CHILDREN_EXCHANGE
from services.indicators import operations as ops
from services.indicators.models import outbox as outbox_table, processed_events
from services.indicators.schemas import (ChildReportOut, ChildReportQuery, CloseOut, ControlLevelsIn, DensityFormIn,
                                         DensityFormOut, FormQuery, InterviewIn, LevelOut, PublicAnswerIn,
                                         PublicAnswerOut, QuestionnaireIn, QuestionnaireOut, ResponseOut,
                                         SatisfactionOut, SurveyIn, SurveyOut, SurveyQuery, VerdictOut, VerdictQuery)
from services.plumbing import operator_endpoints
from services.plumbing.auth import ADMINISTRATOR, INSPECTOR, PUBLIC, VIEWER, signed_in
from services.plumbing.clock import Clock
from services.plumbing.consumer import reliable_event_handler
from services.plumbing.db import Database
from services.plumbing.http import api, error_response
from services.plumbing.idempotency import apply_once
from services.plumbing.rate_limit import client_address
from services.plumbing.outbox import Outbox
from services.plumbing.providers import Identity

MIGRATIONS = Path(__file__).parent / "migrations"
OFFICE = signed_in(ADMINISTRATOR, INSPECTOR, VIEWER)
RECORDERS = signed_in(INSPECTOR, ADMINISTRATOR)
ADMINS = signed_in(ADMINISTRATOR)


class IndicatorsService(operator_endpoints.OperatorEndpoints):
    name = "indicators"

    db = Database(MIGRATIONS)
    outbox = Outbox(outbox_table)
    identity = Identity()
    clock = Clock()

    def _ctx(self) -> ops.Context:
        return ops.Context(self.identity.home, self.identity.tree, self.outbox, ops.Settings.from_config(self.config))

    # --- vector density (病媒生物密度) ---

    @api("GET", "/vector/control-levels/<node>", response=list[LevelOut], access=OFFICE,
         summary="控制水平 The control level of each method for a node (its own, an office's above, or the default)")
    def get_control_levels(self, request, node, principal):
        return ops.get_levels(self.db.session, principal, node)

    @api("PUT", "/vector/control-levels/<node>", body=ControlLevelsIn, response=list[LevelOut], access=ADMINS,
         summary="设置控制水平 Set control levels for a node's subtree (its administrator); verdicts are judged again")
    def set_control_levels(self, request, node, body: ControlLevelsIn, principal):
        now = self.clock.now()
        with self.db.transaction() as session:
            result = ops.set_levels(session, self._ctx(), principal, node, body, now)
            ops.refresh_gauges(session)
        return result

    @api("POST", "/vector/forms", body=DensityFormIn, response=DensityFormOut, status=201, statuses=(200,),
         access=RECORDERS,
         summary="录入病媒生物密度 Record a monitoring form (the centre's figures for an area and month); "
                 "idempotent by idempotency_key",
         description="Readings must be possible figures for their method (no negative, NaN or impossible "
                     "values) and sampled within the form's month. The same idempotency key again answers 200 "
                     "with the stored form and changes nothing.")
    def record_form(self, request, body: DensityFormIn, principal):
        now = self.clock.now()
        with self.db.transaction() as session:
            result, created = ops.record_form(session, self._ctx(), principal, body, now)
            ops.refresh_gauges(session)
        return (201 if created else 200), result

    @api("GET", "/vector/forms", query=FormQuery, response=list[DensityFormOut], access=OFFICE,
         summary="监测记录 Monitoring forms, newest first (the caller's subtree)")
    def list_forms(self, request, query: FormQuery, principal):
        return ops.list_forms(self.db.session, principal, query.period, query.area, query.limit, self._ctx())

    @api("GET", "/vector/verdicts", query=VerdictQuery, response=list[VerdictOut], access=OFFICE,
         summary="四害密度判定 Each area's verdict for a period: three of four species at the control level, "
                 "the fourth within three times it")
    def list_verdicts(self, request, query: VerdictQuery, principal):
        return ops.list_verdicts(self.db.session, self._ctx(), principal, query.period, query.area)

    @api("GET", "/vector/verdicts/<area>/<period>", response=VerdictOut, access=OFFICE,
         summary="判定说明 One area's verdict with its figures, levels and explanation")
    def explain_verdict(self, request, area, period, principal):
        checked = VerdictQuery.model_validate({"period": period, "area": area})
        return ops.explain_verdict(self.db.session, self._ctx(), principal, checked.area, checked.period)

    # --- questionnaires and surveys (群众满意率) ---

    @api("POST", "/questionnaires", body=QuestionnaireIn, response=QuestionnaireOut, status=201, access=ADMINS,
         summary="定义问卷 Define a questionnaire version (items, answer scales, satisfied answers, place type or "
                 "content area; administrators)")
    def define_questionnaire(self, request, body: QuestionnaireIn, principal):
        with self.db.transaction() as session:
            return ops.define_questionnaire(session, self._ctx(), principal, body, self.clock.now())

    @api("GET", "/questionnaires", response=list[QuestionnaireOut], access=OFFICE,
         summary="问卷列表 The questionnaire versions of the caller's offices (defined on their nodes, "
                 "above or below them)")
    def list_questionnaires(self, request, principal):
        return ops.list_questionnaires(self.db.session, principal)

    @api("GET", "/questionnaires/<code>/<version>", response=QuestionnaireOut, access=OFFICE,
         summary="问卷明细 One questionnaire version")
    def get_questionnaire(self, request, code, version, principal):
        return ops.get_questionnaire(self.db.session, code, version, principal)

    @api("POST", "/surveys", body=SurveyIn, response=SurveyOut, status=201, statuses=(200,), access=RECORDERS,
         summary="发起调查 Start a survey wave: draw each area's random sample (seed recorded) and issue one-time "
                 "answer codes (shown only in this answer)")
    def create_survey(self, request, body: SurveyIn, principal):
        with self.db.transaction() as session:
            result, created = ops.create_survey(session, self._ctx(), principal, body, self.clock.now())
        return (201 if created else 200), {"Cache-Control": "no-store"}, result

    @api("GET", "/surveys", query=SurveyQuery, response=list[SurveyOut], access=OFFICE,
         summary="调查列表 Survey waves (the caller's subtree)")
    def list_surveys(self, request, query: SurveyQuery, principal):
        return ops.list_surveys(self.db.session, principal, query.period, query.limit)

    @api("GET", "/surveys/<survey_id>", response=SurveyOut, access=OFFICE,
         summary="调查明细 One survey wave with its sample (no answer codes)")
    def get_survey(self, request, survey_id, principal):
        return ops.get_survey(self.db.session, principal, survey_id)

    @api("POST", "/surveys/<survey_id>/responses", body=InterviewIn, response=ResponseOut, status=201,
         statuses=(200,), access=RECORDERS,
         summary="录入访谈答卷 An interviewer records a sampled respondent's answers (the same answers again: 200, "
                 "no change)")
    def record_interview(self, request, survey_id, body: InterviewIn, principal):
        with self.db.transaction() as session:
            result, created = ops.record_interview(session, principal, survey_id, body, self.clock.now())
        return (201 if created else 200), result

    @api("GET", "/surveys/<survey_id>/satisfaction", response=SatisfactionOut, access=OFFICE,
         summary="满意率 Satisfaction per area, place type, content area and item, with sample size and the 95 % "
                 "Wilson interval; areas below the threshold flagged")
    def get_satisfaction(self, request, survey_id, principal):
        return ops.satisfaction(self.db.session, self._ctx(), principal, survey_id)

    @api("POST", "/surveys/<survey_id>/close", response=CloseOut, access=RECORDERS,
         summary="结束调查 Close the wave: publish each area's rate (also to the tier above) and low items as "
                 "findings for the area")
    def close_survey(self, request, survey_id, principal):
        with self.db.transaction() as session:
            return ops.close_survey(session, self._ctx(), principal, survey_id, self.clock.now())

    def _client(self, request) -> str:
        return client_address(request, trust_forwarded_for=str(
            self.config.get("INDICATORS_TRUST_FORWARDED_FOR", "false")).lower() == "true")

    @api("POST", "/public/survey-answers", body=PublicAnswerIn, response=PublicAnswerOut, status=201,
         access=PUBLIC,
         summary="居民在线作答 A sampled resident answers through the public link with the one-time code "
                 "(anonymous; rate-limited per client address)")
    def public_answer(self, request, body: PublicAnswerIn):
        settings = ops.Settings.from_config(self.config)
        with self.db.transaction() as session:
            # The attempt is counted even when the answer is refused: the transaction commits.
            outcome = ops.public_answer(session, body, self._client(request), settings, self.clock.now())
        if isinstance(outcome, ops.Throttled):
            reason = (f"尝试次数过多，请 {outcome.retry_after} 秒后再试; too many attempts, try again in "
                      f"{outcome.retry_after} s")
            response = error_response(429, "too_many_requests", reason, [{"field": "response_code", "reason": reason}])
            response.headers["Retry-After"] = str(outcome.retry_after)
            return response
        if isinstance(outcome, DomainError):
            raise outcome
        return 201, outcome

    # --- tiers: the children's verdicts and rates ---

    def _apply_once(self, body, event_type: str, consumer: str, apply):
        return apply_once(self.db, processed_events, body, event_type, f"indicators.{consumer}", apply)

    @reliable_event_handler("tier", "vector_verdict_published", exchange=CHILDREN_EXCHANGE,
                            routing_key="vector_verdict_published.#")
    def on_child_vector_verdict_published(self, body):
        return self._apply_once(body, "vector_verdict_published", "on_child_vector_verdict_published",
                                lambda session, envelope, payload: ops.apply_child_vector(
                                    session, envelope.occurred_at, payload))

    @reliable_event_handler("tier", "satisfaction_published", exchange=CHILDREN_EXCHANGE,
                            routing_key="satisfaction_published.#")
    def on_child_satisfaction_published(self, body):
        return self._apply_once(body, "satisfaction_published", "on_child_satisfaction_published",
                                lambda session, envelope, payload: ops.apply_child_satisfaction(
                                    session, envelope.occurred_at, payload))

    @api("GET", "/children/indicators", query=ChildReportQuery, response=list[ChildReportOut], access=OFFICE,
         summary="下级指标 Vector verdicts and satisfaction rates reported by child stacks")
    def list_child_reports(self, request, query: ChildReportQuery, principal):
        return ops.child_reports(self.db.session, principal, query.period, query.kind)
