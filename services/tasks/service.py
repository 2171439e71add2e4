"""Tasks service: rectification tasks (整改任务) and their ledger (工作台账).

Entrypoints only: parsing and validation happen in the shared HTTP layer, rules in
`domain`, use cases in `operations`. Time comes from the controllable clock
(`services.plumbing.clock`), so tests can let deadlines pass.

Config (infra/nameko.yaml):
  TASKS_SWEEP_INTERVAL          seconds between sweeps in each instance (default 60; 0 = no timer)
  TASKS_URGE_REPEAT_HOURS       repeat an urge notice (督办) this often while overdue (24)
  TASKS_ESCALATION_GRACE_HOURS  escalate to the tier above this long after the deadline (72)
  TASKS_ANSWER_HOURS            the tier above owes an answer within this many hours (72)
  TASKS_RELAPSE_WINDOW_DAYS     a repeat finding within this many days of a close-out is a relapse (90)
  TASKS_SWEEP_BATCH             tasks taken per sweep (500)
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
from services.plumbing.db import Database
from services.plumbing.http import api
from services.plumbing.idempotency import apply_once
from services.plumbing.outbox import Outbox
from services.plumbing.timers import ConfigurableTimer
from services.plumbing.providers import Identity
from services.tasks import operations as ops
from services.tasks.domain import Action
from services.tasks.models import outbox as outbox_table, processed_events
from services.tasks.schemas import (AnswerIn, CoordinationOut, CoordinationQuery, EscalateIn, FiguresOut,
                                    FiguresQuery, FixIn, HistoryOut, LedgerQuery, RejectIn, StartIn, SweepOut,
                                    TaskOut, VerifyIn)

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


class TasksService(operator_endpoints.OperatorEndpoints):
    name = "tasks"

    db = Database(MIGRATIONS)
    outbox = Outbox(outbox_table)
    identity = Identity()
    clock = Clock()

    @property
    def _settings(self) -> ops.Settings:
        return ops.Settings.from_config(self.config)

    # --- consuming findings ---

    def _apply_once(self, body, event_type: str, consumer: str, apply):
        return apply_once(self.db, processed_events, body, event_type, f"tasks.{consumer}", apply)

    @reliable_event_handler("inspection", "inspection_submitted")
    def on_inspection_submitted(self, body):
        now = self.clock.now()

        def apply(session, envelope, event):
            tasks = ops.open_tasks(session, event, self.outbox, self.identity.home, self._settings, now,
                                   correlation_id=str(event.inspection_id), child_stacks=self.identity.child_stacks)
            ops.refresh_gauges(session, now)
            return [t.id for t in tasks]
        return self._apply_once(body, "inspection_submitted", "on_inspection_submitted", apply)

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

    @api("GET", "/coordination", query=CoordinationQuery, response=list[CoordinationOut],
         summary="协调事项 Escalations from child stacks this tier owes an answer to")
    def list_coordination(self, request, query: CoordinationQuery):
        return ops.list_coordination(self.db.session, query.status, self.clock.now())

    @api("POST", "/coordination/<task_id>/answer", body=AnswerIn, response=CoordinationOut,
         summary="协调答复 Answer a child stack's escalation (sent down to its ledger)")
    def answer_coordination(self, request, task_id, body: AnswerIn):
        with self.db.transaction() as session:
            return ops.answer_coordination(session, task_id, body.actor, body.role, body.note, body.new_deadline_at,
                                           self.outbox, self.identity.home, self.clock.now())

    # --- the ledger ---

    @api("GET", "/tasks", query=LedgerQuery, response=list[TaskOut],
         summary="整改台账 The ledger: tasks filtered by subject, status, light, category, period")
    def list_tasks(self, request, query: LedgerQuery):
        return ops.list_tasks(self.db.session, query, self.clock.now())

    @api("GET", "/tasks/<task_id>", response=TaskOut, summary="查看整改任务 One task with its history")
    def get_task(self, request, task_id):
        return ops.task_out(ops.get_task(self.db.session, task_id), self.clock.now(), with_history=True)

    @api("GET", "/tasks/<task_id>/history", response=list[HistoryOut], summary="履职记录 A task's transitions")
    def get_history(self, request, task_id):
        return ops.task_history(self.db.session, task_id)

    @api("GET", "/ledger/export.csv", query=LedgerQuery, summary="导出台账 CSV Export the ledger as CSV (UTF-8)")
    def export_csv(self, request, query: LedgerQuery):
        data = ops.export_csv(self.db.session, query, self.clock.now())
        return Response(data, content_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": "attachment; filename=ledger.csv"})

    @api("GET", "/ledger/export.xlsx", query=LedgerQuery, summary="导出台账 Excel Export the ledger as .xlsx")
    def export_xlsx(self, request, query: LedgerQuery):
        data = ops.export_xlsx(self.db.session, query, self.clock.now())
        return Response(data, content_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                        headers={"Content-Disposition": "attachment; filename=ledger.xlsx"})

    @api("GET", "/figures", query=FiguresQuery, response=list[FiguresOut],
         summary="台账统计 Figures per subject: 销号率, on-time rate, mean time to fix, relapses")
    def get_figures(self, request, query: FiguresQuery):
        return ops.figures(self.db.session, query.period, query.subject_id, self.clock.now())

    # --- the lifecycle ---

    def _act(self, task_id: str, action: Action, body, **kw) -> TaskOut:
        now = self.clock.now()
        with self.db.transaction() as session:
            result = ops.act(session, task_id, action, body.actor, body.role, now, self.outbox, self._settings, **kw)
            ops.refresh_gauges(session, now)
        return result

    @api("POST", "/tasks/<task_id>/start", body=StartIn, response=TaskOut, summary="开始整改 Start the fix")
    def start_task(self, request, task_id, body: StartIn):
        return self._act(task_id, Action.start, body, note=body.note)

    @api("POST", "/tasks/<task_id>/fix", body=FixIn, response=TaskOut,
         summary="提交整改 Submit the fix with after-photos and a note")
    def submit_fix(self, request, task_id, body: FixIn):
        return self._act(task_id, Action.submit_fix, body, note=body.note, evidence=body.after_photos)

    @api("POST", "/tasks/<task_id>/verify", body=VerifyIn, response=TaskOut,
         summary="核实销号 Verify the fix on site and close the task (inspecting side, not the fixer)")
    def verify_task(self, request, task_id, body: VerifyIn):
        return self._act(task_id, Action.verify, body, note=body.note, evidence=body.evidence)

    @api("POST", "/tasks/<task_id>/reject", body=RejectIn, response=TaskOut,
         summary="退回重改 Reject the fix: back to in progress")
    def reject_task(self, request, task_id, body: RejectIn):
        return self._act(task_id, Action.reject, body, note=body.reason, evidence=body.evidence)

    @api("POST", "/tasks/<task_id>/escalate", body=EscalateIn, response=TaskOut,
         summary="上报协调 Cannot solve locally: escalate to the tier above")
    def escalate_task(self, request, task_id, body: EscalateIn):
        return self._act(task_id, Action.escalate, body, note=body.reason)

    @api("POST", "/tasks/<task_id>/answer", body=AnswerIn, response=TaskOut,
         summary="协调答复 The tier above answers an escalation (optionally a new deadline)")
    def answer_task(self, request, task_id, body: AnswerIn):
        return self._act(task_id, Action.answer, body, note=body.note, new_deadline_at=body.new_deadline_at)

    # --- the sweeper ---

    def _sweep(self) -> SweepOut:
        now = self.clock.now()
        with self.db.transaction() as session:
            result = ops.sweep(session, self.outbox, now, self._settings)
            ops.refresh_gauges(session, now)
        return result

    @api("POST", "/sweeps", response=SweepOut, status=201,
         summary="督办巡检 Run the overdue sweep now (urge notices, escalations)")
    def run_sweep(self, request):
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
