"""Batched scoring (issue 11): the database ranks as the domain rules say, and a batch of
events gives exactly the figures, ranks and claims that the same events one by one give."""
import random
from uuid import uuid4

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from nameko.testing.services import worker_factory
from services.contracts.nodes import Tier
from services.plumbing.consumer import DUPLICATE
from services.plumbing.db import WorkerDatabase
from services.plumbing.providers import StackIdentity
from services.scoring.models import Base, PeriodScore, ScoreInputRow, processed_events
from services.scoring.service import ScoringService
from tests.ranking_rules import ranks_as_the_domain_rules_do
from tests.unit.scoring.test_service_unit import RecordingOutbox, inspection_event

def test_the_database_ranks_a_group_as_the_domain_rules_do():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    ranks_as_the_domain_rules_do(engine)


def make_service():
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    Base.metadata.create_all(engine)
    svc = worker_factory(ScoringService, db=WorkerDatabase(sessionmaker(bind=engine, expire_on_commit=False)),
                         outbox=RecordingOutbox(), identity=StackIdentity(home="411502008000", tier=Tier.street,
                                                                          tree=None), default_policy="street")
    svc.engine = engine
    return svc


def figures(svc):
    with Session(svc.engine) as session:
        rows = session.execute(select(PeriodScore)).scalars().all()
        table = {(r.subject_id, r.period_kind, r.period): (r.score, r.grade, r.inputs, r.vetoed, r.rank, r.ranked,
                                                          r.peers, r.movement, r.position) for r in rows}
        inputs = session.execute(select(func.count()).select_from(ScoreInputRow)).scalar_one()
        claims = session.execute(select(func.count()).select_from(processed_events)).scalar_one()
    return table, inputs, claims


def test_a_batch_gives_the_figures_and_ranks_of_the_same_events_one_by_one():
    rng = random.Random(7)
    communities = [f"41150200800{i}" for i in range(1, 9)]
    ids = {node: str(uuid4()) for node in communities}
    days = ["2026-10-26", "2026-11-02", "2026-11-03", "2026-11-09", "2026-11-16", "2026-12-01"]
    events = [inspection_event(node, float(rng.choice([70, 80, 85, 90, 95, 100])), rng.choice(days), ids[node])
              for node in (rng.choice(communities) for _ in range(60))]
    redelivered = [events[3], events[17], events[17]]  # duplicates, one of them twice within one batch

    one_by_one = make_service()
    outcomes = [one_by_one.on_inspection_submitted([body])[0] for body in events + redelivered]
    assert outcomes[-3:] == [DUPLICATE] * 3

    batched = make_service()
    stream = events[:20] + [redelivered[0]] + events[20:] + redelivered[1:]
    batch_outcomes = []
    for start in range(0, len(stream), 9):
        batch_outcomes += batched.on_inspection_submitted(stream[start:start + 9])
    assert batch_outcomes.count(DUPLICATE) == 3

    table, inputs, claims = figures(batched)
    assert (table, inputs, claims) == figures(one_by_one)
    assert inputs == 60 and claims == 60
    # What consumers were told adds up to the same ranks as the table holds, both ways.
    for svc in (one_by_one, batched):
        told = svc.outbox.ranks("2026-11")
        month = {sid: (rank, ranked, movement) for (sid, kind, period), (_, _, _, _, rank, ranked, _, movement, _)
                 in table.items() if kind == "month" and period == "2026-11"}
        assert told == month
    # Batches publish fewer events (and so fewer revisions) for the same figures.
    assert len(batched.outbox.events) + len(batched.outbox.rankings) < \
        len(one_by_one.outbox.events) + len(one_by_one.outbox.rankings)


def test_a_ledger_update_that_cannot_change_a_figure_changes_nothing():
    import json
    from tests.unit.scoring.test_service_unit import SAMPLES
    svc = make_service()
    subject_id = str(uuid4())
    svc.on_inspection_submitted([inspection_event("411502008001", 96.0, "2026-11-02", subject_id)])
    ledger = json.loads((SAMPLES / "ledger_figures_updated.v1.json").read_text(encoding="utf-8"))
    ledger["payload"].update(subject_id=subject_id, node="411502008001", overdue_open=0)
    svc.on_ledger_figures_updated([ledger])
    before = figures(svc)[0]
    svc.outbox.events.clear()
    svc.outbox.rankings.clear()
    later = json.loads(json.dumps(ledger))
    later["event_id"] = str(uuid4())
    later["payload"].update(opened=ledger["payload"]["opened"] + 1, computed_at="2026-11-30T00:00:00Z")
    assert svc.on_ledger_figures_updated([later]) == [0]
    assert svc.outbox.events == [] and svc.outbox.rankings == []
    assert figures(svc)[0] == before
