"""Inspection service: the registry of subjects and places, and on-site inspections.

Entrypoints only: parsing and validation happen in the shared HTTP layer, rules in
`domain`, use cases in `operations`. (The operator-endpoints mixin is imported as a module so that
`nameko run services.inspection.service` finds only this service class.)
"""
from __future__ import annotations

import base64
import binascii
from pathlib import Path

from nameko.rpc import rpc
from werkzeug.wrappers import Response

from services.contracts.errors import RuleViolation

from services.inspection import imports, metrics, operations as ops, schedules
from services.inspection.domain import UNANNOUNCED
from services.inspection.models import outbox as outbox_table
from services.inspection.schemas import (BatchItemOut, ImportIn, ImportOut, InspectionBatchIn, InspectionBatchOut,
                                         InspectionIn, InspectionOut, ListQuery, NodeQuery, PlaceCreate, PlaceOut,
                                         PlaceQuery, SubjectCreate, SubjectOut)
from services.contracts.identity import ADMINISTRATOR, INSPECTOR, ROLES, Grant, Principal
from services.plumbing.auth import signed_in
from services.plumbing.clock import Clock
from services.plumbing.timers import ConfigurableTimer
from services.plumbing.db import Database
from services.plumbing.evidence import PhotoEvidence, cited
from services.plumbing.http import Unprocessable, api
from services.plumbing import offload, operator_endpoints
from services.plumbing.db import register_outage
from services.plumbing.outbox import Outbox
from services.plumbing.providers import CatalogueProvider, Identity

MIGRATIONS = Path(__file__).parent / "migrations"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
IMPORT_PARSE_SECONDS = 60  # 20,000 rows parse in well under it on a small machine
register_outage("worker processes", offload.Busy, offload.WorkerFailed)


class InspectionService(operator_endpoints.OperatorEndpoints):
    name = "inspection"

    db = Database(MIGRATIONS)
    outbox = Outbox(outbox_table)
    identity = Identity()
    catalogue = CatalogueProvider()
    clock = Clock()
    # The photos findings cite: the inspector's own uploads, or already on this inspection.
    cited_photos = PhotoEvidence()

    def _check_evidence(self, request, body: InspectionIn,
                        inspection_id: str | None = None) -> None:
        self.cited_photos.require(request, [
            pair for i, result in enumerate(body.results)
            for pair in cited(f"results[{i}].evidence", result.evidence)], inspection_id=inspection_id)

    @staticmethod
    def _count_submitted(inspection: InspectionOut) -> InspectionOut:
        # Counted after the commit: a rolled-back submission is not a submission. An unreleased
        # 暗访 is not counted yet: /metrics is public, and a kind="unannounced" sample moving
        # would tell its subject a visit happened. It is counted when its office releases it.
        # The score histogram likewise (its count would move alone).
        if inspection.kind != UNANNOUNCED or inspection.released_at is not None:
            InspectionService._count(inspection)
        return inspection

    @staticmethod
    def _count(inspection: InspectionOut) -> None:
        metrics.INSPECTIONS_SUBMITTED.labels(inspection.kind).inc()
        metrics.INSPECTION_SCORES.labels(inspection.checklist.code).observe(inspection.score)

    def _jurisdiction(self) -> ops.Jurisdiction:
        return ops.Jurisdiction(self.identity.home, self.identity.tree)

    @property
    def _scale(self) -> int:
        return int(self.config.get("SCORE_SCALE", 100))

    def _broker_caller(self) -> Principal:
        """Who an RPC call acts as. RPC is reached only through the stack's own broker (no
        token travels with it), so it acts as this stack's own office, as it always did."""
        return Principal(subject=f"rpc:{self.name}", name="RPC", kind="machine",
                         grants=tuple(Grant(role, self.identity.home) for role in ROLES))

    # --- registry ---

    @api("POST", "/subjects", body=SubjectCreate, response=SubjectOut, status=201, access=signed_in(ADMINISTRATOR),
         summary="登记考评对象 Register a subject (child unit, department or unit in the area)",
         description="Administrators of a node covering the subject's node. A name already registered "
                     "for that node and type → 409.")
    def register_subject(self, request, body: SubjectCreate, principal: Principal):
        with self.db.transaction() as session:
            return ops.register_subject(session, body, self._jurisdiction(), principal)

    @api("GET", "/subjects", query=NodeQuery, response=list[SubjectOut], access=signed_in(),
         summary="考评对象列表 List subjects", description="Only subjects in the caller's subtrees.")
    def list_subjects(self, request, query: NodeQuery, principal: Principal):
        return ops.list_subjects(self.db.session, query, principal)

    @api("GET", "/subjects/<subject_id>", response=SubjectOut, access=signed_in(),
         summary="查看考评对象 Get a subject")
    def get_subject(self, request, subject_id, principal: Principal):
        return ops.read_subject(self.db.session, subject_id, principal)

    @api("POST", "/places", body=PlaceCreate, response=PlaceOut, status=201, access=signed_in(ADMINISTRATOR),
         summary="登记检查点位 Register a place (public toilet, market, back alley ...)",
         description="Administrators of a node covering the place's node.")
    def register_place(self, request, body: PlaceCreate, principal: Principal):
        with self.db.transaction() as session:
            return ops.register_place(session, body, self._jurisdiction(), principal)

    @api("GET", "/places", query=PlaceQuery, response=list[PlaceOut], access=signed_in(),
         summary="点位列表 List places", description="Only places in the caller's subtrees.")
    def list_places(self, request, query: PlaceQuery, principal: Principal):
        return ops.list_places(self.db.session, query, principal)

    @api("GET", "/places/<place_id>", response=PlaceOut, access=signed_in(), summary="查看点位 Get a place")
    def get_place(self, request, place_id, principal: Principal):
        return ops.read_place(self.db.session, place_id, principal)

    # --- history import (历史导入) ---

    def _parse(self, content: bytes, now):
        """The workbook parsed in a worker process (`offload`): the service keeps answering, and a
        parse past IMPORT_PARSE_SECONDS is abandoned (422 naming the file)."""
        limit = float(self.config.get("IMPORT_PARSE_SECONDS", IMPORT_PARSE_SECONDS))
        imports.check_archive(content)  # the zip's directory only: a bomb is refused here, at once
        try:
            return offload.run(imports.parse_workbook, content, now, timeout=limit)
        except offload.TooSlow:
            raise RuleViolation("content_base64", f"表格解析超时（超过{limit:g}秒），未导入任何数据，请拆分后分批导入 "
                                                  f"(parsing the workbook took longer than {limit:g} s)") from None
        except offload.TooLarge:
            raise RuleViolation("content_base64", "表格解析所需内存过多，未导入任何数据，请拆分后分批导入 "
                                                  "(parsing the workbook needs too much memory)") from None

    @api("GET", "/imports/template.xlsx", access=signed_in(ADMINISTRATOR), content_type=XLSX,
         summary="历史数据导入模板 The Excel template for importing history",
         description="Sheets 考评对象, 检查点位, 检查记录 and 整改台账 with Chinese headers (required ones in red, "
                     "each explained in a comment) and an example row; 说明 explains the rules.")
    def import_template(self, request, principal: Principal):
        principal.require(ADMINISTRATOR, self.identity.home, "node")
        return Response(imports.template_workbook(), content_type=XLSX,
                        headers={"Content-Disposition": "attachment; filename=chuangwei-import-template.xlsx"})

    @api("POST", "/imports", body=ImportIn, response=ImportOut, access=signed_in(ADMINISTRATOR),
         summary="导入历史数据 Import history from Excel (all or nothing, idempotent)",
         description="Administrators of this stack's office. Every problem is listed as "
                     "`<sheet>!<row>:<column>` with its reason and nothing is stored (422); the same file "
                     "uploaded again stores nothing new. Imported inspections are published as history: "
                     "their tasks keep their own dates, and no notice, overdue or veto follows for the past.")
    def import_history(self, request, body: ImportIn, principal: Principal):
        principal.require(ADMINISTRATOR, self.identity.home, "node")
        try:
            content = base64.b64decode(body.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise RuleViolation("content_base64", "不是有效的 base64 (not base64)") from None
        now = ops._now()
        try:
            plan = self._parse(content, now)
            with self.db.transaction() as session:
                result = ops.import_history(session, plan, self.catalogue, self._jurisdiction(), self.outbox,
                                            self._scale, principal, now)
        except imports.ImportRejected as exc:
            raise Unprocessable(f"导入失败，共{len(exc.issues)}处问题，未导入任何数据 (nothing was stored)",
                                errors=[issue.as_error() for issue in exc.issues]) from None
        for what, count in result["stored"].items():
            metrics.HISTORY_IMPORTED.labels(what).inc(count)
        return result

    # --- schedules (检查计划) ---

    @api("POST", "/schedules", body=schedules.ScheduleIn, response=schedules.ScheduleOut, status=201,
         access=signed_in(ADMINISTRATOR), summary="制定检查计划 Define a rhythm: who is checked how often, by whom",
         description="Administrators of the office's node. Exactly one of subject_type, subject_id, place_type.")
    def create_schedule(self, request, body: schedules.ScheduleIn, principal: Principal):
        with self.db.transaction() as session:
            return schedules.create_schedule(session, body, self._jurisdiction(), principal, self.clock.now())

    @api("GET", "/schedules", query=schedules.ScheduleQuery, response=list[schedules.ScheduleOut],
         access=signed_in(), summary="检查计划 The offices' rhythms the caller sees")
    def list_schedules(self, request, query: schedules.ScheduleQuery, principal: Principal):
        return schedules.list_schedules(self.db.session, principal, query.node)

    @api("GET", "/schedules/due", query=schedules.ScheduleQuery, response=list[schedules.DueOut],
         access=signed_in(), summary="待检查 What is due this period, what was missed in the last",
         description="Every scheduled subject or place in the caller's subtrees: its current period, whether "
                     "it has been checked in it, and whether the last ended period was missed (漏检).")
    def due(self, request, query: schedules.ScheduleQuery, principal: Principal):
        return schedules.due_checks(self.db.session, principal, self.clock.now(), query.node)

    @api("GET", "/schedules/missed", query=schedules.ScheduleQuery, response=list[schedules.MissedOut],
         access=signed_in(), summary="漏检记录 Missed checks flagged so far")
    def missed(self, request, query: schedules.ScheduleQuery, principal: Principal):
        return schedules.list_missed(self.db.session, principal, query.node)

    @api("POST", "/schedules/sweep", response=schedules.SweepResult, access=signed_in(ADMINISTRATOR),
         summary="检查漏检 Flag the checks missed in each schedule's last ended period now",
         description="The timer (INSPECTION_SCHEDULE_SWEEP_SECONDS, default 900) does the same; each missed "
                     "check is flagged and told (check_missed) once.")
    def sweep_schedules(self, request, principal: Principal):
        principal.require(ADMINISTRATOR, self.identity.home, "node")
        with self.db.transaction() as session:
            return {"flagged": schedules.flag_missed(session, self.outbox, self.clock.now())}

    @ConfigurableTimer.decorator("INSPECTION_SCHEDULE_SWEEP_SECONDS", 900)
    def sweep_schedules_on_timer(self):
        with self.db.transaction() as session:
            schedules.flag_missed(session, self.outbox, self.clock.now())

    # --- checklists ---

    @api("GET", "/checklists", access=signed_in(),
         summary="检查标准目录 The checklist catalogue (versions and checklists)")
    def list_checklists(self, request, principal: Principal):
        return {"catalogue_id": self.catalogue.catalogue_id, "name": self.catalogue.name,
                "versions": [{"version": v.version, "effective_from": v.effective_from.isoformat(),
                              "checklists": [{"code": c.code, "name": c.name, "place_types": c.place_types,
                                              "max_points": c.max_points} for c in v.checklists]}
                             for v in self.catalogue.versions]}

    @api("GET", "/checklists/<version>/<code>", access=signed_in(), summary="检查表明细 One checklist with its items")
    def get_checklist(self, request, version, code, principal: Principal):
        return self.catalogue.checklist(version, code).model_dump(mode="json")

    # --- inspections ---

    @api("POST", "/inspections", body=InspectionIn, response=InspectionOut, status=201, statuses=(200,),
         access=signed_in(INSPECTOR),
         summary="录入/提交检查 Record an inspection (draft or submitted); idempotent by idempotency_key",
         description="Inspectors holding the role on a node covering the subject's node. A retry with the "
                     "same idempotency key (body field or Idempotency-Key header) and the same body answers "
                     "200 with the stored inspection; the same key with another body answers 409. Keys are "
                     "the caller's own: another person's key is another request.")
    def record_inspection(self, request, body: InspectionIn, principal: Principal):
        header_key = request.headers.get("Idempotency-Key")
        key_field = "idempotency_key"
        if body.idempotency_key is None and header_key:
            body = self._with_header_key(body, header_key)
            key_field = "Idempotency-Key"
        self._check_evidence(request, body)
        with self.db.transaction() as session:
            result, created = ops.record_inspection(session, body, self.catalogue, self._jurisdiction(),
                                                    self.outbox, self._scale, principal, key_field=key_field)
        if created and result.status == "submitted":
            self._count_submitted(result)
        return (201 if created else 200), result

    @api("POST", "/inspection-batches", body=InspectionBatchIn, response=InspectionBatchOut, status=201,
         statuses=(200,), access=signed_in(INSPECTOR),
         summary="批量录入检查 Record many inspections at once (a phone's day, an import)",
         description="Each inspection is validated, checked and made idempotent exactly as by POST /inspections, "
                     "in one transaction: if any is refused, the answer names it (inspections[i].field) and "
                     "nothing is recorded. 201 if any was recorded now, 200 if every idempotency key was "
                     "already used (a retried sync).")
    def record_inspections(self, request, body: InspectionBatchIn, principal: Principal):
        self.cited_photos.require(request, [
            pair for k, inspection in enumerate(body.inspections) for i, result in enumerate(inspection.results)
            for pair in cited(f"inspections[{k}].results[{i}].evidence", result.evidence)])
        with self.db.transaction() as session:
            results = ops.record_inspections(session, body.inspections, self.catalogue, self._jurisdiction(),
                                             self.outbox, self._scale, principal)
        created = 0
        for result, was_created in results:
            if was_created:
                created += 1
                if result.status == "submitted":
                    self._count_submitted(result)
        return (201 if created else 200), InspectionBatchOut(
            created=created, results=[BatchItemOut(status=201 if c else 200, inspection=r) for r, c in results])

    @staticmethod
    def _with_header_key(body: InspectionIn, header_key: str) -> InspectionIn:
        # The header gets the body field's bounds: model_copy would skip them.
        try:
            return InspectionIn.model_validate({**body.model_dump(), "idempotency_key": header_key})
        except ValueError as exc:
            raise RuleViolation("Idempotency-Key", "must be one line of 1–128 characters "
                                                   "(幂等键须为1至128个字符的单行文本)") from exc

    @api("PUT", "/inspections/<inspection_id>", body=InspectionIn, response=InspectionOut,
         access=signed_in(INSPECTOR), summary="修改草稿 Replace a draft inspection (submit=true submits it)")
    def update_draft(self, request, inspection_id, body: InspectionIn, principal: Principal):
        self._check_evidence(request, body, inspection_id=inspection_id)
        with self.db.transaction() as session:
            result = ops.update_draft(session, inspection_id, body, self.catalogue, self._jurisdiction(),
                                      self.outbox, self._scale, principal)
        return self._count_submitted(result) if result.status == "submitted" else result

    @api("POST", "/inspections/<inspection_id>/submit", response=InspectionOut, access=signed_in(INSPECTOR),
         summary="提交草稿 Submit a draft: score it and publish inspection_submitted")
    def submit_draft(self, request, inspection_id, principal: Principal):
        with self.db.transaction() as session:
            result = ops.submit_draft(session, inspection_id, self.catalogue, self._jurisdiction(), self.outbox,
                                      principal)
        return self._count_submitted(result)

    @api("POST", "/inspections/<inspection_id>/release", response=InspectionOut,
         access=signed_in(INSPECTOR, ADMINISTRATOR),
         summary="公开暗访结果 Release a submitted unannounced inspection (暗访) to its subject",
         description="Inspectors or administrators of the inspecting office. Publishes inspection_released "
                     "once; releasing again changes nothing (200). Other kinds → 409.")
    def release_inspection(self, request, inspection_id, principal: Principal):
        now = ops._now()
        with self.db.transaction() as session:
            result = ops.release_inspection(session, inspection_id, self.catalogue, self._jurisdiction(),
                                            self.outbox, principal, now)
        if result.released_at == now:  # released by this call (a repeated release counts nothing)
            self._count(result)
        return result

    @api("GET", "/inspections", query=ListQuery, response=list[InspectionOut], access=signed_in(),
         summary="检查记录 List inspections",
         description="Only inspections of subjects in the caller's subtrees; an unannounced inspection (暗访) "
                     "only to its inspecting office until released, and never with its inspectors or note "
                     "to anyone else.")
    def list_inspections(self, request, query: ListQuery, principal: Principal):
        return ops.list_inspections(self.db.session, query, self.catalogue, principal, self.identity.home)

    @api("GET", "/inspections/<inspection_id>", response=InspectionOut, access=signed_in(),
         summary="查看检查 Get an inspection")
    def get_inspection(self, request, inspection_id, principal: Principal):
        return ops.get_inspection(self.db.session, inspection_id, self.catalogue, principal, self.identity.home)

    # --- RPC for other services and tools (through the stack's own broker only) ---

    @rpc
    def get_inspection_rpc(self, inspection_id: str) -> dict:
        return ops.get_inspection(self.db.session, inspection_id, self.catalogue, self._broker_caller(),
                                  self.identity.home).model_dump(mode="json")

    @rpc
    def submit_inspection(self, data: dict) -> dict:
        body = InspectionIn.model_validate(data)
        with self.db.transaction() as session:
            result, created = ops.record_inspection(session, body, self.catalogue, self._jurisdiction(),
                                                    self.outbox, self._scale, self._broker_caller())
        if created and result.status == "submitted":
            self._count_submitted(result)
        return result.model_dump(mode="json")
