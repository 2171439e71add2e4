"""Inspection service: the registry of subjects and places, and on-site inspections.

Entrypoints only: parsing and validation happen in the shared HTTP layer, rules in
`domain`, use cases in `operations`. (The operator-endpoints mixin is imported as a module so that
`nameko run services.inspection.service` finds only this service class.)
"""
from __future__ import annotations

from pathlib import Path

from nameko.rpc import rpc

from services.inspection import metrics, operations as ops
from services.inspection.models import outbox as outbox_table
from services.inspection.schemas import (InspectionIn, InspectionOut, ListQuery, NodeQuery, PlaceCreate, PlaceOut,
                                         PlaceQuery, SubjectCreate, SubjectOut)
from services.plumbing.db import Database
from services.plumbing.http import api
from services.plumbing import operator_endpoints
from services.plumbing.outbox import Outbox
from services.plumbing.providers import CatalogueProvider, Identity

MIGRATIONS = Path(__file__).parent / "migrations"


class InspectionService(operator_endpoints.OperatorEndpoints):
    name = "inspection"

    db = Database(MIGRATIONS)
    outbox = Outbox(outbox_table)
    identity = Identity()
    catalogue = CatalogueProvider()

    @staticmethod
    def _count_submitted(inspection: InspectionOut) -> InspectionOut:
        # Counted after the commit: a rolled-back submission is not a submission.
        metrics.INSPECTIONS_SUBMITTED.labels(inspection.kind).inc()
        metrics.INSPECTION_SCORES.labels(inspection.checklist.code).observe(inspection.score)
        return inspection

    def _jurisdiction(self) -> ops.Jurisdiction:
        return ops.Jurisdiction(self.identity.home, self.identity.tree)

    @property
    def _scale(self) -> int:
        return int(self.config.get("SCORE_SCALE", 100))

    # --- registry ---

    @api("POST", "/subjects", body=SubjectCreate, response=SubjectOut, status=201,
         summary="登记考评对象 Register a subject (child unit, department or unit in the area)")
    def register_subject(self, request, body: SubjectCreate):
        with self.db.transaction() as session:
            return ops.register_subject(session, body, self._jurisdiction())

    @api("GET", "/subjects", query=NodeQuery, response=list[SubjectOut], summary="考评对象列表 List subjects")
    def list_subjects(self, request, query: NodeQuery):
        return ops.list_subjects(self.db.session, query)

    @api("GET", "/subjects/<subject_id>", response=SubjectOut, summary="查看考评对象 Get a subject")
    def get_subject(self, request, subject_id):
        return ops.subject_out(ops.get_subject(self.db.session, subject_id))

    @api("POST", "/places", body=PlaceCreate, response=PlaceOut, status=201,
         summary="登记检查点位 Register a place (public toilet, market, back alley ...)")
    def register_place(self, request, body: PlaceCreate):
        with self.db.transaction() as session:
            return ops.register_place(session, body, self._jurisdiction())

    @api("GET", "/places", query=PlaceQuery, response=list[PlaceOut], summary="点位列表 List places")
    def list_places(self, request, query: PlaceQuery):
        return ops.list_places(self.db.session, query)

    @api("GET", "/places/<place_id>", response=PlaceOut, summary="查看点位 Get a place")
    def get_place(self, request, place_id):
        return ops.place_out(ops.get_place(self.db.session, place_id))

    # --- checklists ---

    @api("GET", "/checklists", summary="检查标准目录 The checklist catalogue (versions and checklists)")
    def list_checklists(self, request):
        return {"catalogue_id": self.catalogue.catalogue_id, "name": self.catalogue.name,
                "versions": [{"version": v.version, "effective_from": v.effective_from.isoformat(),
                              "checklists": [{"code": c.code, "name": c.name, "place_types": c.place_types,
                                              "max_points": c.max_points} for c in v.checklists]}
                             for v in self.catalogue.versions]}

    @api("GET", "/checklists/<version>/<code>", summary="检查表明细 One checklist with its items")
    def get_checklist(self, request, version, code):
        return self.catalogue.checklist(version, code).model_dump(mode="json")

    # --- inspections ---

    @api("POST", "/inspections", body=InspectionIn, response=InspectionOut, status=201,
         summary="录入/提交检查 Record an inspection (draft or submitted); idempotent by idempotency_key")
    def record_inspection(self, request, body: InspectionIn):
        if body.idempotency_key is None and request.headers.get("Idempotency-Key"):
            body = body.model_copy(update={"idempotency_key": request.headers["Idempotency-Key"]})
        with self.db.transaction() as session:
            result, created = ops.record_inspection(session, body, self.catalogue, self._jurisdiction(),
                                                    self.outbox, self._scale)
        if created and result.status == "submitted":
            self._count_submitted(result)
        return (201 if created else 200), result

    @api("PUT", "/inspections/<inspection_id>", body=InspectionIn, response=InspectionOut,
         summary="修改草稿 Replace a draft inspection (submit=true submits it)")
    def update_draft(self, request, inspection_id, body: InspectionIn):
        with self.db.transaction() as session:
            result = ops.update_draft(session, inspection_id, body, self.catalogue, self._jurisdiction(),
                                      self.outbox, self._scale)
        return self._count_submitted(result) if result.status == "submitted" else result

    @api("POST", "/inspections/<inspection_id>/submit", response=InspectionOut,
         summary="提交草稿 Submit a draft: score it and publish inspection_submitted")
    def submit_draft(self, request, inspection_id):
        with self.db.transaction() as session:
            result = ops.submit_draft(session, inspection_id, self.catalogue, self._jurisdiction(), self.outbox)
        return self._count_submitted(result)

    @api("GET", "/inspections", query=ListQuery, response=list[InspectionOut], summary="检查记录 List inspections")
    def list_inspections(self, request, query: ListQuery):
        return ops.list_inspections(self.db.session, query, self.catalogue)

    @api("GET", "/inspections/<inspection_id>", response=InspectionOut, summary="查看检查 Get an inspection")
    def get_inspection(self, request, inspection_id):
        return ops.get_inspection(self.db.session, inspection_id, self.catalogue)

    # --- RPC for other services and tools ---

    @rpc
    def get_inspection_rpc(self, inspection_id: str) -> dict:
        return ops.get_inspection(self.db.session, inspection_id, self.catalogue).model_dump(mode="json")

    @rpc
    def submit_inspection(self, data: dict) -> dict:
        body = InspectionIn.model_validate(data)
        with self.db.transaction() as session:
            result, created = ops.record_inspection(session, body, self.catalogue, self._jurisdiction(),
                                                    self.outbox, self._scale)
        if created and result.status == "submitted":
            self._count_submitted(result)
        return result.model_dump(mode="json")
