"""The scoring service's event handler with its dependencies replaced (worker_factory).

The database is an in-memory SQLite one (no server); the outbox records what would be published.
"""
import json
from datetime import datetime, timezone
from pathlib import Path
from uuid import uuid4

import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from services.contracts.events import InvalidEvent, Producer, make_event
from services.contracts.events.inspection import InspectionSubmitted
from services.contracts.events.scoring import RankingPublished
from services.contracts.nodes import Tier
from services.plumbing.auth import Grant, GrantOrigin, Principal, Provenance
from services.plumbing.consumer import DUPLICATE
from services.plumbing.db import WorkerDatabase
from services.plumbing.providers import StackIdentity
from services.scoring.models import Base, PeriodScore, ScoreInputRow
from services.scoring.service import ScoringService

SAMPLES = Path(__file__).resolve().parents[3] / "services" / "contracts" / "events" / "samples"
STREET = "411502008000"
# Two administrators of the street office: revoking a veto takes both.
# Both signed in themselves; their accounts and grants were made by the operator before any proposal.
_MADE = datetime(2026, 1, 1, tzinfo=timezone.utc)
_SIGNED_IN = {"methods": ("pwd",),
              "provenance": Provenance(_MADE, None, (GrantOrigin("administrator", STREET, _MADE, None),))}
ADMIN = Principal("user-li", "李强", (Grant("administrator", STREET),), **_SIGNED_IN)
SECOND = Principal("user-zhao", "赵敏", (Grant("administrator", STREET),), **_SIGNED_IN)


class RecordingOutbox:
    def __init__(self):
        self.events = []   # score_published on this stack's own exchange
        self.rankings = []  # ranking_published on this stack's own exchange
        self.upward = []   # copies for the parent tier (chuangwei.up)

    def add(self, session, payload, correlation_id=None, exchange=None, **kw):
        if exchange:
            self.upward.append(payload)
        elif isinstance(payload, RankingPublished):
            self.rankings.append(payload)
        else:
            self.events.append(payload)

    def ranks(self, period: str, kind: str = "month") -> dict:
        """Each subject's latest (rank, ranked, movement) as the ranking events told it."""
        out = {}
        for event in self.rankings:
            if event.period == period and event.period_kind == kind:
                for change in event.changes:
                    out[change.subject.subject_id] = (change.rank, change.ranked, change.movement)
        return out


@pytest.fixture
def service():
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    Base.metadata.create_all(engine)
    svc = worker_factory(
        ScoringService,
        db=WorkerDatabase(sessionmaker(bind=engine, expire_on_commit=False)),
        outbox=RecordingOutbox(),
        identity=StackIdentity(home="411502008000", tier=Tier.street, tree=None),
        default_policy="street",
    )
    svc.engine = engine
    yield svc
    engine.dispose()


def inspection_event(node, score, day, subject_id=None):
    base = json.loads((SAMPLES / "inspection_submitted.v1.json").read_text(encoding="utf-8"))["payload"]
    base.update(inspection_id=str(uuid4()), score=score, inspected_at=f"{day}T10:00:00+08:00",
                subject={"subject_id": subject_id or str(uuid4()), "node": node, "name": f"社区{node[-3:]}",
                         "subject_type": "child_unit"})
    payload = InspectionSubmitted.model_validate(base)
    return make_event(payload, Producer(node="411502008000", service="inspection")).to_message()


def test_inspection_event_scores_the_subject_and_rolls_up(service):
    published = service.on_inspection_submitted([inspection_event("411502008001", 88.0, "2026-11-02")])[0]
    events = service.outbox.events
    assert published == len(events) + len(service.outbox.rankings)
    month = [e for e in events if e.period == "2026-11"]
    assert {e.subject.subject_id for e in month} == {"411502008001", "411502008000"}  # the community and its street
    community = next(e for e in month if e.subject.subject_id == "411502008001")
    assert community.score == 88.0 and community.inputs == 1 and community.revision == 1
    assert service.outbox.ranks("2026-11")["411502008001"] == (None, False, None)  # below the minimum of 2
    assert {e.period_kind for e in events if e.subject.subject_id == "411502008001"} == {
        "week", "month", "quarter", "half_year", "year"}


def test_redelivered_event_changes_nothing(service):
    body = inspection_event("411502008006", 90.0, "2026-11-09")
    service.on_inspection_submitted([body])[0]
    count = len(service.outbox.events)
    assert service.on_inspection_submitted([body])[0] == DUPLICATE
    assert len(service.outbox.events) == count
    with service.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ScoreInputRow)).scalar_one() == 1


def test_second_inspection_ranks_and_revises(service):
    subject_id = str(uuid4())
    service.on_inspection_submitted([inspection_event("411502008008", 80.0, "2026-11-02", subject_id)])[0]
    service.on_inspection_submitted([inspection_event("411502008008", 90.0, "2026-11-09", subject_id)])[0]
    month = [e for e in service.outbox.events if e.period == "2026-11" and e.subject.subject_id == "411502008008"]
    assert [e.revision for e in month] == [1, 2]
    assert month[-1].score == 85.0 and month[-1].inputs == 2
    assert service.outbox.ranks("2026-11")["411502008008"] == (1, True, None)
    assert [r.version for r in service.outbox.rankings if r.period == "2026-11" and r.tier == "community"] == [1, 2]


def test_poison_message_raises_invalid_event(service):
    with pytest.raises(InvalidEvent):
        service.on_inspection_submitted([{"event_type": "inspection_submitted", "payload": {}}])[0]
    assert service.outbox.events == []


def test_ledger_figures_for_a_known_subject_veto_it(service):
    subject_id = str(uuid4())
    service.on_inspection_submitted([inspection_event("411502008001", 96.0, "2026-11-02", subject_id)])[0]
    service.on_inspection_submitted([inspection_event("411502008001", 96.0, "2026-11-09", subject_id)])[0]
    service.outbox.events.clear()
    service.outbox.rankings.clear()
    ledger = json.loads((SAMPLES / "ledger_figures_updated.v1.json").read_text(encoding="utf-8"))
    ledger["payload"].update(subject_id=subject_id, node="411502008001", overdue_open=4)
    service.on_ledger_figures_updated([ledger])[0]
    month = next(e for e in service.outbox.events if e.period == "2026-11" and e.subject.subject_id == "411502008001")
    assert month.vetoed and month.grade == "合格" and month.score == 96.0
    assert service.outbox.rankings == []  # a veto lowers the grade, not the place
    assert service.on_ledger_figures_updated([ledger])[0] == DUPLICATE


def test_external_child_scores_keep_the_latest_revision(service):
    """Issue 6's hook: a child stack's figure feeds the roll-up; a late, older revision is ignored."""
    from services.contracts.periods import Period
    from services.scoring import operations as ops
    ctx = ops.Context("411502008000", None, service.outbox)
    month = Period.parse("2026-11")
    with service.db.transaction() as session:
        assert ops.apply_child_score(session, ctx, "411502008000", "411502008001", "周家山社区", month,
                                     90.0, 100, 4, "411502008001", revision=2)
        assert ops.apply_child_score(session, ctx, "411502008000", "411502008006", "飨堂社区", month,
                                     800.0, 1000, 4, "411502008006", revision=1)
        assert not ops.apply_child_score(session, ctx, "411502008000", "411502008001", "周家山社区", month,
                                         10.0, 100, 4, "411502008001", revision=1)
    street = [e for e in service.outbox.events if e.subject.subject_id == "411502008000" and e.period == "2026-11"]
    assert street[-1].score == 85.0 and street[-1].inputs == 2  # (90 + 80) / 2, the stale 10 ignored
    with service.engine.connect() as conn:
        stored = conn.execute(select(PeriodScore.score).where(PeriodScore.subject_id == "411502008000",
                                                              PeriodScore.period == "2026-11")).scalar_one()
    assert stored == 85.0


def test_only_the_home_aggregate_goes_up_to_the_parent_tier(service):
    service.on_inspection_submitted([inspection_event("411502008001", 88.0, "2026-11-02")])[0]
    assert service.outbox.upward, "the street's own aggregate must be reported upward"
    assert {e.subject.node for e in service.outbox.upward} == {"411502008000"}
    assert {e.scoring_node for e in service.outbox.upward} == {"411502008000"}
    own = {(e.period, e.revision) for e in service.outbox.events if e.subject.node == "411502008000"}
    assert {(e.period, e.revision) for e in service.outbox.upward} == own


def child_report(node, period, score, revision, inputs=4, scoring_node=None):
    body = json.loads((SAMPLES / "score_published.v1.json").read_text(encoding="utf-8"))
    body["event_id"] = str(uuid4())
    body["producer"] = {"node": scoring_node or node, "service": "scoring"}
    body["payload"].update(scoring_node=scoring_node or node, period_kind="month", period=period, score=score,
                           scale=100, revision=revision, inputs=inputs,
                           subject={"subject_id": node, "node": node, "name": "子级", "subject_type": "child_unit"})
    return body


def test_child_stack_reports_roll_up_and_late_revisions_are_ignored():
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    Base.metadata.create_all(engine)
    district = worker_factory(
        ScoringService, db=WorkerDatabase(sessionmaker(bind=engine, expire_on_commit=False)),
        outbox=RecordingOutbox(), identity=StackIdentity(home="411502000000", tier=Tier.district, tree=None,
                                                         child_stacks=("411502008000",)),
        default_policy="street")
    district.on_child_score_published([child_report("411502008000", "2026-11", 90.0, revision=2)])[0]
    district.on_child_score_published([child_report("411502001000", "2026-11", 80.0, revision=1)])[0]
    late = district.on_child_score_published([child_report("411502008000", "2026-11", 10.0, revision=1)])[0]
    assert late is False  # an older revision arriving late changes nothing
    own = [e for e in district.outbox.events if e.period == "2026-11" and e.period_kind == "month"]
    latest = {}
    for e in own:
        latest[e.subject.node] = e
    assert latest["411502008000"].score == 90.0 and latest["411502001000"].score == 80.0
    ranks = district.outbox.ranks("2026-11")
    assert ranks["411502008000"][:2] == (1, True) and ranks["411502001000"][:2] == (2, True)  # 4 inputs each
    assert latest["411502000000"].score == 85.0  # the district: mean of its streets' reports
    assert [e.subject.node for e in district.outbox.upward if e.period == "2026-11"][-1] == "411502000000"
    # A street's report of one of its communities is not a tier aggregate: ignored.
    assert district.on_child_score_published([
        child_report("411502008001", "2026-11", 50.0, revision=1, scoring_node="411502008000")])[0] is False
    with pytest.raises(InvalidEvent):  # a "child" outside this district
        district.on_child_score_published([child_report("411503001000", "2026-11", 50.0, revision=1)])[0]
    office = Principal("user-d", "区爱卫办", (Grant("viewer", "411502000000"),))
    freshness = {f["child"]: f for f in district.get_child_freshness(None, principal=office)}
    assert freshness["411502008000"]["events"] == 2 and freshness["411502001000"]["events"] == 1
    engine.dispose()


# --- vetoes: listed and revoked --------------------------------------------------------------


def scored_community(service, node="411502008001", scores=(96.0, 98.0)):
    """A community with two November inspections (mean 97: 优秀), ranked."""
    subject_id = str(uuid4())
    for day, score in zip(("2026-11-02", "2026-11-09"), scores):
        service.on_inspection_submitted([inspection_event(node, score, day, subject_id)])[0]
    return subject_id


def figure(service, node, period):
    return service.explain_score(None, node, period, principal=ADMIN)


def test_a_revoked_veto_is_kept_listed_and_no_longer_counts(service):
    from services.contracts.errors import StateConflict, UnknownReference
    from services.scoring.models import Veto
    from services.scoring.schemas import ApprovalDecisionIn, VetoIn, VetoQuery, VetoRevokeIn

    node = "411502008001"
    alias = scored_community(service)
    entered = service.enter_veto(None, body=VetoIn(
        subject_id=alias, period="2026-11", reason="criticism",
        note="背街小巷垃圾堆积", reference="浉爱卫〔2026〕15号"), principal=ADMIN)
    other = service.enter_veto(None, body=VetoIn(  # another subject's veto: untouched by the revocation
        subject_id=scored_community(service, "411502008006", (80.0, 82.0)), period="2026-W45",
        reason="media_exposure", note="信阳日报"), principal=ADMIN)
    capped = {k: figure(service, node, k) for k in ("2026-11", "2026-Q4", "2026-H2", "2026")}
    assert all(f.vetoed and f.grade == "合格" and f.score == 97.0 for f in capped.values())
    assert not figure(service, node, "2026-W45").vetoed  # a month's veto does not reach into its weeks

    listed = service.get_vetoes(None, principal=ADMIN, query=VetoQuery(subject_id=alias))  # the inspection's subject id works
    assert [v.veto_id for v in listed] == [entered.veto_id]
    assert listed[0].subject_id == node and listed[0].issued_by == "李强 (user-li)" and not listed[0].revoked
    assert listed[0].reference == "浉爱卫〔2026〕15号" and listed[0].revoked_at is None
    assert {v.veto_id for v in service.get_vetoes(None, principal=ADMIN, query=VetoQuery())} == {entered.veto_id, other.veto_id}
    assert [v.veto_id for v in service.get_vetoes(None, principal=ADMIN, query=VetoQuery(period="2026-H2"))] == [
        entered.veto_id, other.veto_id]  # both count in the half year
    assert [v.veto_id for v in service.get_vetoes(None, principal=ADMIN, query=VetoQuery(period="2026-W45"))] == [other.veto_id]
    assert service.get_vetoes(None, principal=ADMIN, query=VetoQuery(period="2026-10")) == []

    service.outbox.events.clear()
    proposed = service.revoke_veto(None, entered.veto_id, body=VetoRevokeIn(reason="经复核，申诉成立"),
                                   principal=ADMIN)
    assert proposed.status == "pending" and proposed.veto.pending_revocation == proposed.approval_id
    assert service.outbox.events == [] and figure(service, node, "2026-11").vetoed  # nothing yet
    approved = service.approve(None, proposed.approval_id, body=ApprovalDecisionIn(), principal=SECOND)
    revoked = approved.veto
    assert revoked.revoked and revoked.revoked_by == "李强 (user-li)" and revoked.revoke_reason == "经复核，申诉成立"
    assert revoked.revoke_approved_by == "赵敏 (user-zhao)" and revoked.revoked_at is not None
    assert {f.period: f.grade for f in approved.period_scores} == {
        "2026-11": "优秀", "2026-Q4": "优秀", "2026-H2": "优秀", "2026": "优秀"}
    republished = {e.period: e for e in service.outbox.events if e.subject.subject_id == node}
    assert set(republished) == {"2026-11", "2026-Q4", "2026-H2", "2026"} and approved.published >= 4
    for key, event in republished.items():
        assert not event.vetoed and event.grade == "优秀" and event.veto_reasons == []
        assert event.score == 97.0 and event.revision == capped[key].revision + 1
        after = figure(service, node, key)
        assert not after.vetoed and after.explain["vetoes"] == [] and after.revision == event.revision
    assert figure(service, "411502008006", "2026-11").vetoed  # the other veto still stands

    # Kept on record: listed only on request, with who revoked it and why.
    assert [v.veto_id for v in service.get_vetoes(None, principal=ADMIN, query=VetoQuery(subject_id=node))] == []
    [kept] = service.get_vetoes(None, principal=ADMIN, query=VetoQuery(subject_id=node, include_revoked=True))
    assert kept.veto_id == entered.veto_id and kept.revoked and kept.revoke_reason == "经复核，申诉成立"

    # Refused requests change nothing.
    service.outbox.events.clear()
    with service.engine.connect() as conn:
        before = conn.execute(select(Veto.id, Veto.revoked_at, Veto.revoked_by, Veto.revoke_reason)
                              .order_by(Veto.id)).all()
        scores_before = conn.execute(select(PeriodScore.subject_id, PeriodScore.period, PeriodScore.revision)
                                     .order_by(PeriodScore.id)).all()
    with pytest.raises(StateConflict) as conflict:
        service.revoke_veto(None, entered.veto_id, body=VetoRevokeIn(reason="再次撤销"), principal=ADMIN)
    assert conflict.value.field == "veto_id" and "already revoked" in conflict.value.reason
    with pytest.raises(UnknownReference) as unknown:
        service.revoke_veto(None, str(uuid4()), body=VetoRevokeIn(reason="撤销"), principal=ADMIN)
    assert unknown.value.field == "veto_id"
    assert service.outbox.events == []
    with service.engine.connect() as conn:
        assert conn.execute(select(Veto.id, Veto.revoked_at, Veto.revoked_by, Veto.revoke_reason)
                            .order_by(Veto.id)).all() == before
        assert conn.execute(select(PeriodScore.subject_id, PeriodScore.period, PeriodScore.revision)
                            .order_by(PeriodScore.id)).all() == scores_before


def test_revoking_one_of_two_vetoes_keeps_the_subject_vetoed(service):
    from services.scoring.schemas import ApprovalDecisionIn, VetoIn, VetoRevokeIn
    node = "411502008001"
    scored_community(service)
    first = service.enter_veto(None, body=VetoIn(subject_id=node, period="2026-11", reason="criticism"),
                               principal=ADMIN)
    service.enter_veto(None, body=VetoIn(subject_id=node, period="2026-Q4", reason="media_exposure"),
                       principal=ADMIN)
    service.outbox.events.clear()
    proposed = service.revoke_veto(None, first.veto_id, body=VetoRevokeIn(reason="通报撤回"), principal=SECOND)
    result = service.approve(None, proposed.approval_id, body=ApprovalDecisionIn(note="同意"), principal=ADMIN)
    grades = {f.period: (f.grade, f.vetoed) for f in result.period_scores}
    # The month is free again; the quarter's own veto still counts in the quarter, half year and year.
    assert grades == {"2026-11": ("优秀", False), "2026-Q4": ("合格", True), "2026-H2": ("合格", True),
                      "2026": ("合格", True)}
    quarter = figure(service, node, "2026-Q4")
    assert [v["reason"] for v in quarter.explain["vetoes"]] == ["media_exposure"]
    # The month changed grade; the longer periods' reasons changed (one veto fewer): all republished.
    assert {e.period for e in service.outbox.events if e.subject.subject_id == node} == {
        "2026-11", "2026-Q4", "2026-H2", "2026"}


def test_revoke_body_needs_a_reason_and_takes_no_actor():
    from pydantic import ValidationError
    from services.scoring.schemas import VetoRevokeIn
    for body, wrong in (({}, "reason"), ({"reason": "   "}, "reason"),
                        ({"reason": "申诉成立", "revoked_by": "区爱卫办"}, "revoked_by")):  # who comes from the token
        with pytest.raises(ValidationError) as exc:
            VetoRevokeIn.model_validate(body)
        assert [e["loc"][0] for e in exc.value.errors()] == [wrong]


# --- two administrators, closed periods, 暗访 (issue 10) -------------------------------------------


def released_event(node, inspection_id):
    from services.contracts.events.inspection import InspectionReleased
    payload = InspectionReleased(inspection_id=inspection_id, inspecting_node=STREET, released_at="2026-11-20T08:00:00Z",
                                 subject={"subject_id": node, "node": node, "name": "社区", "subject_type": "child_unit"})
    return make_event(payload, Producer(node=STREET, service="inspection")).to_message()


def test_the_proposer_cannot_approve_and_nothing_changes_before_approval(service):
    from services.contracts.errors import PermissionDenied, StateConflict
    from services.scoring.schemas import ApprovalDecisionIn, ApprovalQuery, VetoIn, VetoRevokeIn
    node = "411502008001"
    scored_community(service)
    veto = service.enter_veto(None, body=VetoIn(subject_id=node, period="2026-11", reason="criticism"),
                              principal=ADMIN)
    proposed = service.revoke_veto(None, veto.veto_id, body=VetoRevokeIn(reason="通报撤回"), principal=ADMIN)
    with pytest.raises(StateConflict) as twice:  # one pending revocation per veto
        service.revoke_veto(None, veto.veto_id, body=VetoRevokeIn(reason="再次申请"), principal=SECOND)
    assert twice.value.field == "veto_id"
    with pytest.raises(PermissionDenied) as own:
        service.approve(None, proposed.approval_id, body=ApprovalDecisionIn(), principal=ADMIN)
    assert own.value.field == "approval_id"
    community_admin = Principal("user-c", "社区管理员", (Grant("administrator", node),))
    with pytest.raises(PermissionDenied):  # not an administrator of the owning node (the street)
        service.approve(None, proposed.approval_id, body=ApprovalDecisionIn(), principal=community_admin)
    assert figure(service, node, "2026-11").vetoed
    [pending] = service.get_approvals(None, query=ApprovalQuery(), principal=SECOND)
    assert pending.approval_id == proposed.approval_id and pending.proposed_by == "李强 (user-li)"
    rejected = service.reject(None, proposed.approval_id, body=ApprovalDecisionIn(note="材料不全"), principal=SECOND)
    assert rejected.status == "rejected" and rejected.decided_by == "赵敏 (user-zhao)"
    assert figure(service, node, "2026-11").vetoed  # rejected: the veto stands
    assert service.get_approvals(None, query=ApprovalQuery(), principal=SECOND) == []


def test_a_closed_period_is_recomputed_only_with_a_reason_and_logged(service):
    from datetime import datetime, timezone
    from services.contracts.errors import RuleViolation
    from services.scoring import operations as ops
    scored_community(service)
    ctx = ops.Context(STREET, None, service.outbox)
    december = datetime(2026, 12, 3, tzinfo=timezone.utc)  # November has ended
    with service.db.transaction() as session:
        with pytest.raises(RuleViolation) as refused:
            ops.recompute(session, ctx, ADMIN, "2026-11", None, now=december)
        assert refused.value.field == "reason"
        done = ops.recompute(session, ctx, ADMIN, "2026-11", "补录检查记录", now=december)
        assert done["closed"] and done["reason"] == "补录检查记录" and done["requested_by"] == "李强 (user-li)"
        still_open = ops.recompute(session, ctx, ADMIN, "2026-12", None, now=december)
        assert not still_open["closed"]
        log = ops.list_recomputes(session, ctx, ADMIN)
    assert [(e["period"], e["closed"]) for e in log] == [("2026-12", False), ("2026-11", True)]
    shown = figure(service, "411502008001", "2026-11").explain["recomputes"]
    assert [(e["reason"], e["requested_by"]) for e in shown] == [("补录检查记录", "李强 (user-li)")]


def test_an_unannounced_inspection_is_withheld_until_released_in_either_order(service):
    node = "411502008001"
    community_viewer = Principal("user-v", "社区查看者", (Grant("viewer", node),))
    street_inspector = Principal("user-i", "街道检查员", (Grant("inspector", STREET),))
    before, after = str(uuid4()), str(uuid4())

    def unannounced(inspection_id, day):
        body = inspection_event(node, 80.0, day)
        body["payload"].update(inspection_id=inspection_id, kind="unannounced", inspectors=["暗访员"])
        return body

    def shown(principal):
        return {i["inspection_id"]: i for i in
                service.explain_score(None, node, "2026-11", principal=principal).explain["inspections"]}

    service.on_inspection_released(released_event(node, after))  # released before it is submitted
    service.on_inspection_submitted([unannounced(before, "2026-11-02")])[0]
    service.on_inspection_submitted([unannounced(after, "2026-11-09")])[0]
    assert set(shown(community_viewer)) == {after} and shown(community_viewer)[after]["inspectors"] is None
    assert {k: v["inspectors"] for k, v in shown(street_inspector).items()} == {before: ["暗访员"], after: ["暗访员"]}
    # The office's figure counts both; the subject side's, only the released one (embargo).
    assert service.explain_score(None, node, "2026-11", principal=street_inspector).inputs == 2
    assert service.explain_score(None, node, "2026-11", principal=community_viewer).inputs == 1
    body = released_event(node, before)
    service.on_inspection_released(body)
    assert set(shown(community_viewer)) == {before, after}
    assert service.explain_score(None, node, "2026-11", principal=community_viewer).inputs == 2
    assert all(i["inspectors"] is None for i in shown(community_viewer).values())
    assert service.on_inspection_released(body) == DUPLICATE
