"""Intake service: cases of the digital city-management platform (数字城管) and residents'
reports (群众举报: 12345/12319 hotlines, photos), taken in through Open311 GeoReport v2,
located to a division, routed to the responsible subject's ledger and followed there.

Entrypoints only: parsing and validation happen in the shared HTTP layer, rules in
`domain`, use cases in `operations`.

Who may call (issue 16):
  GET  /open311/v2/services.json              anyone (the category list, nothing private)
  POST /open311/v2/requests.json              a platform's machine client (role `platform` on a node)
  GET  /open311/v2/requests[/<id>].json       platforms and the offices' roles, within their subtrees
  POST /open311/v2/public/requests.json       anyone: the deliberate public exception, bounded per
                                              client address and by identical content; the report
                                              waits for the office to accept it
  GET  /open311/v2/public/requests/<id>.json  anyone holding the id: status and note, nothing else
  POST /cases/<id>/accept|reject              an inspector or administrator over the case's division

Config (infra/nameko.yaml): INTAKE_CATEGORIES (an office's own category file; default the
shipped 数字城管 categories and time limits), INTAKE_DUPLICATE_WINDOW_HOURS (24),
INTAKE_DUPLICATE_RADIUS_M (50), INTAKE_PUBLIC_MAX_PER_WINDOW (5), INTAKE_PUBLIC_WINDOW_SECONDS
(3600), INTAKE_PUBLIC_DUPLICATE_HOURS (24), INTAKE_TRUST_FORWARDED_FOR (false).
"""
from __future__ import annotations

from pathlib import Path

from nameko.extensions import DependencyProvider

from services.intake import domain, operations as ops
from services.intake.models import outbox as outbox_table, processed_events
from services.intake.schemas import (AcceptIn, PublicRequestOut, RejectIn, RequestCreatedOut, RequestQuery,
                                     ServiceOut, ServiceRequestIn, ServiceRequestOut)
from services.plumbing import operator_endpoints
from services.plumbing.auth import ADMINISTRATOR, INSPECTOR, PLATFORM, PUBLIC, VIEWER, signed_in
from services.plumbing.clock import Clock
from services.plumbing.consumer import reliable_event_handler
from services.plumbing.db import Database
from services.plumbing.http import api, error_response
from services.plumbing.idempotency import apply_once
from services.plumbing.outbox import Outbox
from services.plumbing.providers import Identity
from services.plumbing.rate_limit import client_address

MIGRATIONS = Path(__file__).parent / "migrations"
PLATFORMS = signed_in(PLATFORM)
READERS = signed_in(PLATFORM, ADMINISTRATOR, INSPECTOR, VIEWER)
OFFICE = signed_in(INSPECTOR, ADMINISTRATOR)


class Rules(DependencyProvider):
    """The category catalogue and the intake settings, read once per container."""

    def setup(self):
        config = self.container.config
        self.catalogue = domain.load_catalogue(config.get("INTAKE_CATEGORIES") or None)
        self.settings = ops.Settings.from_config(config)

    def get_dependency(self, worker_ctx):
        return self


class IntakeService(operator_endpoints.OperatorEndpoints):
    name = "intake"

    db = Database(MIGRATIONS)
    outbox = Outbox(outbox_table)
    identity = Identity()
    rules = Rules()
    clock = Clock()

    def _divisions(self) -> list[tuple[str, str]]:
        tree = self.identity.tree
        return [(n.code, n.name) for n in tree.nodes.values()] if tree else []

    def _client(self, request) -> str:
        return client_address(request, trust_forwarded_for=self.rules.settings.trust_forwarded_for)

    def _submit(self, body: ServiceRequestIn, channel: ops.Channel):
        with self.db.transaction() as session:
            return ops.submit(session, body, channel, self.rules.catalogue, self._divisions(), self.identity.home,
                              self.rules.settings, self.outbox, self.clock.now())

    # --- Open311 GeoReport v2 ---

    @api("GET", "/open311/v2/services.json", response=list[ServiceOut], access=PUBLIC,
         summary="案件类别 Open311 service list: the 数字城管 case categories with their time limits")
    def list_services(self, request):
        return ops.services_list(self.rules.catalogue)

    @api("POST", "/open311/v2/requests.json", body=ServiceRequestIn, response=list[RequestCreatedOut], status=201,
         access=PLATFORMS, form=True,
         summary="上报案件 A platform submits a case (form-encoded or JSON); routed to the responsible subject")
    def create_request(self, request, body: ServiceRequestIn, principal):
        channel = ops.Channel(source="digital_city", name=principal.name, submitted_by=principal.subject)
        return self._submit(body, channel)

    @api("GET", "/open311/v2/requests/<case_id>.json", response=list[ServiceRequestOut], access=READERS,
         summary="查询案件 One case's status (open/closed) and status notes")
    def get_request(self, request, case_id, principal):
        return ops.get_request(self.db.session, case_id, principal)

    @api("GET", "/open311/v2/requests.json", query=RequestQuery, response=list[ServiceRequestOut], access=READERS,
         summary="案件列表 Cases within the caller's area, filtered by id, category, status and dates")
    def list_requests(self, request, query: RequestQuery, principal):
        return ops.list_requests(self.db.session, query, principal, self.clock.now())

    # --- residents: the deliberate public exception ---

    @api("POST", "/open311/v2/public/requests.json", body=ServiceRequestIn, response=list[RequestCreatedOut],
         status=201, access=PUBLIC, form=True, statuses=(),
         summary="群众举报 A resident's report (anonymous; rate-limited; waits for the office to accept it)")
    def create_public_request(self, request, body: ServiceRequestIn):
        channel = ops.Channel(source="citizen_report", name=domain.PUBLIC_CHANNEL, submitted_by="anonymous",
                              public=True, client=self._client(request))
        try:
            return self._submit(body, channel)
        except ops.TooManyRequests as exc:
            response = error_response(429, exc.code, exc.reason, [{"field": exc.field, "reason": exc.reason}])
            response.headers["Retry-After"] = str(exc.retry_after)
            return response

    @api("GET", "/open311/v2/public/requests/<case_id>.json", response=list[PublicRequestOut], access=PUBLIC,
         summary="举报进度 A report's status for whoever holds its id (nothing about the reporter)")
    def get_public_request(self, request, case_id):
        return ops.get_public_request(self.db.session, case_id)

    # --- the office accepts or refuses residents' reports ---

    @api("POST", "/cases/<case_id>/accept", body=AcceptIn, response=ServiceRequestOut, access=OFFICE,
         summary="受理 Accept a resident's report: route it to the responsible subject (inspector or administrator)")
    def accept_case(self, request, case_id, body: AcceptIn, principal):
        with self.db.transaction() as session:
            return ops.accept(session, case_id, principal, self.rules.catalogue, self.outbox, self.identity.home,
                              self.clock.now())

    @api("POST", "/cases/<case_id>/reject", body=RejectIn, response=ServiceRequestOut, access=OFFICE,
         summary="不予受理 Refuse a resident's report with a reason (inspector or administrator)")
    def reject_case(self, request, case_id, body: RejectIn, principal):
        with self.db.transaction() as session:
            return ops.reject(session, case_id, principal, body.reason, self.clock.now(), self.rules.catalogue,
                              self.outbox, self.identity.home)

    # --- what intake learns and follows ---

    def _apply_once(self, body, event_type: str, consumer: str, apply):
        return apply_once(self.db, processed_events, body, event_type, f"intake.{consumer}", apply)

    @reliable_event_handler("inspection", "inspection_submitted")
    def on_inspection_submitted(self, body):
        def apply(session, envelope, event):
            ops.learn_from_inspection(session, event, self.clock.now())
        return self._apply_once(body, "inspection_submitted", "on_inspection_submitted", apply)

    @reliable_event_handler("tasks", "task_opened")
    def on_task_opened(self, body):
        def apply(session, envelope, opened):
            case = ops.follow_task(session, opened.task, opened.task.status, self.clock.now(),
                                   only_from=(domain.CaseStatus.routed.value,))
            return case.id if case else None
        return self._apply_once(body, "task_opened", "on_task_opened", apply)

    @reliable_event_handler("tasks", "task_status_changed")
    def on_task_status_changed(self, body):
        def apply(session, envelope, changed):
            case = ops.follow_task(session, changed.task, changed.to_status, self.clock.now(), at=changed.at)
            return case.id if case else None
        return self._apply_once(body, "task_status_changed", "on_task_status_changed", apply)

    @reliable_event_handler("tasks", "task_closed")
    def on_task_closed(self, body):
        def apply(session, envelope, closed):
            now = self.clock.now()
            case = ops.follow_task(session, closed.task, "closed", now, at=closed.closed_at)
            ops.record_handling(session, closed.task, domain.handling_outcome(True, closed.on_time), self.outbox,
                                now, at=closed.closed_at)
            return case.id if case else None
        return self._apply_once(body, "task_closed", "on_task_closed", apply)

    @reliable_event_handler("tasks", "task_overdue")
    def on_task_overdue(self, body):
        def apply(session, envelope, overdue):
            case = ops.record_handling(session, overdue.task, domain.handling_outcome(False), self.outbox,
                                       self.clock.now(), at=overdue.overdue_since)
            return case.id if case else None
        return self._apply_once(body, "task_overdue", "on_task_overdue", apply)
