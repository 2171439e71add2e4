"""Tasks service: rectification tasks (整改任务) and their ledger (工作台账).

Entrypoints only: parsing and validation happen in the shared HTTP layer, rules in
`domain`, use cases in `operations`. Time comes from the controllable clock
(`services.plumbing.clock`), so tests can let deadlines pass.

Who may do what (issue 10; the actor and role recorded come from the access token):
  reads (/tasks, /figures, exports, /coordination)  every role, filtered to the caller's subtrees
  start, fix, escalate       a rectifier of the task's responsible subject (grant on its node)
  verify, reject (销号)      an inspector of the inspecting side, never who submitted the fix
  answer an escalation       an inspector or administrator of the office asked to coordinate (the
                             parent stack's, or this office's own without PARENT_STACK)
  POST /sweeps               an administrator of this stack's home node
An unannounced inspection's tasks (暗访) are embargoed until `inspection_released`: only the
inspecting side sees them, nothing is announced or handed down; afterwards the subject side
never sees who inspected nor the inspectors' notes.

Config (infra/nameko.yaml):
  TASKS_SWEEP_INTERVAL          seconds between sweeps in each instance (default 60; 0 = no timer)
  TASKS_URGE_REPEAT_HOURS       repeat an urge notice (督办) this often while overdue (24)
  TASKS_ESCALATION_GRACE_HOURS  escalate this long after the deadline (72)
  TASKS_ANSWER_HOURS            the office asked owes an answer within this many hours (72)
  PARENT_STACK                  the tier above that runs a stack and is federated (its node code):
                                escalations go up the link to it; empty = none, they stay inside
                                this office (督办), and escalated tasks stay workable either way
  TASKS_RELAPSE_WINDOW_DAYS     a repeat finding within this many days of a close-out is a relapse (90)
  TASKS_SWEEP_BATCH             tasks taken per sweep (500)
  TASKS_SATISFACTION_DEADLINE_DAYS  time limit of a low satisfaction item's task (30: our default;
                                the policy leaves it to the office)
  CLOCK_OFFSET_SECONDS          shift this stack's clock (training/demo installations only)
"""
from __future__ import annotations

import logging
from pathlib import Path

from nameko.rpc import rpc
from werkzeug.wrappers import Response

from services.contracts.tiers import CHILDREN_EXCHANGE, PARENT_EXCHANGE, subtree_binding
from services.plumbing.config import home_node
from services.plumbing import operator_endpoints
from services.plumbing.clock import Clock
from services.plumbing.consumer import reliable_event_handler
from services.plumbing.auth import ADMINISTRATOR, INSPECTOR, RECTIFIER, signed_in
from services.plumbing.db import Database
from services.plumbing.evidence import PhotoEvidence, cited
from services.plumbing.http import api
from services.plumbing.idempotency import apply_once
from services.plumbing.outbox import Outbox
from services.plumbing.timers import ConfigurableTimer
from services.plumbing.providers import Identity
from services.tasks import cases, operations as ops, satisfaction
from services.tasks.domain import Action
from services.tasks.models import outbox as outbox_table, processed_events
from services.tasks.schemas import (AnswerIn, CoordinationOut, CoordinationQuery, EscalateIn, FiguresOut,
                                    FiguresQuery, FixIn, HistoryOut, LedgerQuery, RejectIn, StartIn, SweepOut,
                                    TaskOut, VerifyIn)

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class TasksService(operator_endpoints.OperatorEndpoints):
    name = "tasks"

    db = Database(MIGRATIONS)
    outbox = Outbox(outbox_table)
    identity = Identity()
    clock = Clock()
    # The photos an action cites: the caller's own uploads or already on the task (photos decides).
    cited_photos = PhotoEvidence()

    @property
    def _settings(self) -> ops.Settings:
        return ops.Settings.from_config(self.config)

    # --- consuming findings ---

    def _apply_once(self, body, event_type: str, consumer: str, apply):
        return apply_once(self.db, processed_events, ops.scrub_nul(body), event_type, f"tasks.{consumer}", apply)

    @reliable_event_handler("inspection", "inspection_released")
    def on_inspection_released(self, body):
        now = self.clock.now()

        def apply(session, envelope, released):
            if released.inspecting_node != self.identity.home:
                return []  # another office's inspection: its tasks are not in this ledger
            tasks = ops.release_inspection(session, released, self.outbox, now,
                                           correlation_id=str(released.inspection_id))
            ops.refresh_gauges(session, now)
            return [t.id for t in tasks]
        return self._apply_once(body, "inspection_released", "on_inspection_released", apply)

    @reliable_event_handler("inspection", "inspection_submitted")
    def on_inspection_submitted(self, body):
        now = self.clock.now()

        def apply(session, envelope, event):
            tasks = ops.open_tasks(session, event, self.outbox, self.identity.home, self._settings, now,
                                   correlation_id=str(event.inspection_id), child_stacks=self.identity.child_stacks)
            ops.refresh_gauges(session, now)
            return [t.id for t in tasks]
        return self._apply_once(body, "inspection_submitted", "on_inspection_submitted", apply)

    @reliable_event_handler("intake", "case_reported")
    def on_case_reported(self, body):
        now = self.clock.now()

        def apply(session, envelope, case):
            tasks = cases.open_case_task(session, case, self.outbox, self.identity.home, self._settings, now,
                                         self.identity.child_stacks)
            ops.refresh_gauges(session, now)
            return [t.id for t in tasks]
        return self._apply_once(body, "case_reported", "on_case_reported", apply)

    @reliable_event_handler("indicators", "satisfaction_item_low")
    def on_satisfaction_item_low(self, body):
        now = self.clock.now()

        def apply(session, envelope, low):
            tasks = satisfaction.open_satisfaction_task(session, low, self.outbox, self.identity.home, self._settings,
                                                        now, self.identity.child_stacks)
            ops.refresh_gauges(session, now)
            return [t.id for t in tasks]
        return self._apply_once(body, "satisfaction_item_low", "on_satisfaction_item_low", apply)

    # --- tiers: tasks handed down from the parent, progress reported by children ---

    @reliable_event_handler("tier", "task_delegated", exchange=PARENT_EXCHANGE,
                            routing_key=lambda config: subtree_binding(home_node(config), "task_delegated"))
    def on_task_delegated(self, body):
        now = self.clock.now()

        def apply(session, envelope, delegated):
            tasks = ops.accept_delegated(session, delegated, self.outbox, self.identity.home, self._settings,
                                         now, self.identity.child_stacks)
            return [t.id for t in tasks]
        return self._apply_once(body, "task_delegated", "on_task_delegated", apply)

    @reliable_event_handler("tier", "task_status_changed", exchange=CHILDREN_EXCHANGE,
                            routing_key="task_status_changed.#")
    def on_child_task_status_changed(self, body):
        return self._apply_once(body, "task_status_changed", "on_child_task_status_changed", self._mirror)

    @reliable_event_handler("tier", "task_closed", exchange=CHILDREN_EXCHANGE, routing_key="task_closed.#")
    def on_child_task_closed(self, body):
        return self._apply_once(body, "task_closed", "on_child_task_closed", self._mirror)

    @reliable_event_handler("tier", "task_overdue", exchange=CHILDREN_EXCHANGE, routing_key="task_overdue.#")
    def on_child_task_overdue(self, body):
        return self._apply_once(body, "task_overdue", "on_child_task_overdue", self._mirror)

    def _mirror(self, session, envelope, update):
        task = ops.apply_child_update(session, update, self.outbox, self.clock.now())
        return task.id if task else None

    @reliable_event_handler("tier", "task_escalated", exchange=CHILDREN_EXCHANGE, routing_key="task_escalated.#")
    def on_child_task_escalated(self, body):
        def apply(session, envelope, escalated):
            request = ops.record_coordination_request(session, escalated, self.identity.home, self.clock.now(),
                                                      self.outbox)
            return request.task_id if request else None
        return self._apply_once(body, "task_escalated", "on_child_task_escalated", apply)

    @reliable_event_handler("tier", "coordination_answered", exchange=PARENT_EXCHANGE,
                            routing_key=lambda config: subtree_binding(home_node(config), "coordination_answered"))
    def on_coordination_answered(self, body):
        now = self.clock.now()

        def apply(session, envelope, answer):
            task = ops.apply_coordination_answer(session, answer, self.outbox, self._settings, now,
                                                 self.identity.home)
            ops.refresh_gauges(session, now)
            return task.id if task else None
        return self._apply_once(body, "coordination_answered", "on_coordination_answered", apply)

    @api("GET", "/coordination", query=CoordinationQuery, response=list[CoordinationOut], access=signed_in(),
         summary="协调事项 Escalations from child stacks this tier owes an answer to")
    def list_coordination(self, request, query: CoordinationQuery, principal):
        return ops.list_coordination(self.db.session, query.status, self.clock.now(), principal, self.identity.home)

    @api("POST", "/coordination/<task_id>/answer", body=AnswerIn, response=CoordinationOut,
         access=signed_in(INSPECTOR, ADMINISTRATOR),
         summary="协调答复 Answer a child stack's escalation (sent down to its ledger; this office's "
                 "inspector or administrator)")
    def answer_coordination(self, request, task_id, body: AnswerIn, principal):
        with self.db.transaction() as session:
            return ops.answer_coordination(session, task_id, principal, body.note, body.new_deadline_at,
                                           self.outbox, self.identity.home, self.clock.now())

    # --- the ledger (reads: every role, filtered to the caller's subtrees) ---

    @api("GET", "/tasks", query=LedgerQuery, response=list[TaskOut], access=signed_in(),
         summary="整改台账 The ledger: tasks filtered by subject, status, light, category, period")
    def list_tasks(self, request, query: LedgerQuery, principal):
        return ops.list_tasks(self.db.session, query, self.clock.now(), principal)

    @api("GET", "/tasks/<task_id>", response=TaskOut, access=signed_in(),
         summary="查看整改任务 One task with its history")
    def get_task(self, request, task_id, principal):
        return ops.task_out(ops.get_visible_task(self.db.session, task_id, principal), self.clock.now(),
                            with_history=True, principal=principal)

    @api("GET", "/tasks/<task_id>/history", response=list[HistoryOut], access=signed_in(),
         summary="履职记录 A task's transitions")
    def get_history(self, request, task_id, principal):
        return ops.task_history(self.db.session, task_id, principal)

    @api("GET", "/ledger/export.csv", query=LedgerQuery, access=signed_in(), content_type="text/csv",
         summary="导出台账 CSV Export the ledger as CSV (UTF-8)")
    def export_csv(self, request, query: LedgerQuery, principal):
        data = ops.export_csv(self.db.session, query, self.clock.now(), principal)
        return Response(data, content_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": "attachment; filename=ledger.csv"})

    @api("GET", "/ledger/export.xlsx", query=LedgerQuery, access=signed_in(), content_type=XLSX,
         summary="导出台账 Excel Export the ledger as .xlsx")
    def export_xlsx(self, request, query: LedgerQuery, principal):
        data = ops.export_xlsx(self.db.session, query, self.clock.now(), principal)
        return Response(data, content_type=XLSX, headers={"Content-Disposition": "attachment; filename=ledger.xlsx"})

    @api("GET", "/figures", query=FiguresQuery, response=list[FiguresOut], access=signed_in(),
         summary="台账统计 Figures per subject: 销号率, on-time rate, mean time to fix, relapses")
    def get_figures(self, request, query: FiguresQuery, principal):
        return ops.figures(self.db.session, query.period, query.subject_id, self.clock.now(), principal)

    # --- the lifecycle: who may act is decided per task (domain.acting_role) ---

    def _act(self, task_id: str, action: Action, principal, **kw) -> TaskOut:
        now = self.clock.now()
        with self.db.transaction() as session:
            result = ops.act(session, task_id, action, principal, now, self.outbox, self._settings, **kw)
            ops.refresh_gauges(session, now)
        return result

    @api("POST", "/tasks/<task_id>/start", body=StartIn, response=TaskOut, access=signed_in(RECTIFIER),
         summary="开始整改 Start the fix (the responsible subject's rectifier)")
    def start_task(self, request, task_id, body: StartIn, principal):
        return self._act(task_id, Action.start, principal, note=body.note)

    @api("POST", "/tasks/<task_id>/fix", body=FixIn, response=TaskOut, access=signed_in(RECTIFIER),
         summary="提交整改 Submit the fix with after-photos and a note (the responsible subject's rectifier)")
    def submit_fix(self, request, task_id, body: FixIn, principal):
        self.cited_photos.require(request, cited("after_photos", body.after_photos), task_id=task_id)
        return self._act(task_id, Action.submit_fix, principal, note=body.note, evidence=body.after_photos)

    @api("POST", "/tasks/<task_id>/verify", body=VerifyIn, response=TaskOut, access=signed_in(INSPECTOR),
         summary="核实销号 Verify the fix on site and close the task (inspecting side, not the fixer)")
    def verify_task(self, request, task_id, body: VerifyIn, principal):
        self.cited_photos.require(request, cited("evidence", body.evidence), task_id=task_id)
        return self._act(task_id, Action.verify, principal, note=body.note, evidence=body.evidence)

    @api("POST", "/tasks/<task_id>/reject", body=RejectIn, response=TaskOut, access=signed_in(INSPECTOR),
         summary="退回重改 Reject the fix: back to in progress (inspecting side, not the fixer)")
    def reject_task(self, request, task_id, body: RejectIn, principal):
        self.cited_photos.require(request, cited("evidence", body.evidence), task_id=task_id)
        return self._act(task_id, Action.reject, principal, note=body.reason, evidence=body.evidence)

    @api("POST", "/tasks/<task_id>/escalate", body=EscalateIn, response=TaskOut, access=signed_in(RECTIFIER),
         summary="上报协调 Cannot solve locally: escalate to the tier above (the responsible subject's rectifier)")
    def escalate_task(self, request, task_id, body: EscalateIn, principal):
        return self._act(task_id, Action.escalate, principal, note=body.reason)

    @api("POST", "/tasks/<task_id>/answer", body=AnswerIn, response=TaskOut,
         access=signed_in(INSPECTOR, ADMINISTRATOR),
         summary="协调答复 The tier above answers an escalation (optionally a new deadline; its inspector or "
                 "administrator)")
    def answer_task(self, request, task_id, body: AnswerIn, principal):
        return self._act(task_id, Action.answer, principal, note=body.note, new_deadline_at=body.new_deadline_at)

    # --- the sweeper ---

    def _sweep(self) -> SweepOut:
        now = self.clock.now()
        with self.db.transaction() as session:
            result = ops.sweep(session, self.outbox, now, self._settings)
            ops.refresh_gauges(session, now)
        return result

    @api("POST", "/sweeps", response=SweepOut, status=201, access=signed_in(ADMINISTRATOR),
         summary="督办巡检 Run the overdue sweep now (urge notices, escalations; this office's administrator)")
    def run_sweep(self, request, principal):
        # The sweep acts on the whole ledger: the office that owns it decides when.
        principal.require(ADMINISTRATOR, self.identity.home, "role")
        return self._sweep()

    @ConfigurableTimer.decorator("TASKS_SWEEP_INTERVAL", 60)
    def sweep_timer(self):
        result = self._sweep()
        if result.urged or result.escalated:
            log.info("tasks sweep: %s", result.model_dump(mode="json"))

    # --- RPC for other services and tools ---

    @rpc
    def sweep(self) -> dict:
        return self._sweep().model_dump(mode="json")

    @rpc
    def get_task_rpc(self, task_id: str) -> dict:
        return ops.task_out(ops.get_task(self.db.session, task_id), self.clock.now(),
                            with_history=True).model_dump(mode="json")

    @rpc
    def list_tasks_rpc(self, query: dict | None = None) -> list[dict]:
        parsed = LedgerQuery.model_validate(query or {})
        return [t.model_dump(mode="json") for t in ops.list_tasks(self.db.session, parsed, self.clock.now())]
