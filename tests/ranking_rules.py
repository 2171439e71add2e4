"""Random peer groups ranked by `rank_group` against the domain's own rules, on whichever
database an engine points to: SQLite in the unit tests, PostgreSQL in the integration tests
(each database takes a different statement)."""
import random
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.scoring import domain
from services.scoring.models import PeriodScore
from services.scoring.operations import rank_group

NAMES = ["周家山社区", "飨堂社区", "四一社区", "龙井社区", "五里墩社区", "Alpha", "alpha", "社区"]


def ranks_as_the_domain_rules_do(engine):
    """rank_group on random groups gives the places domain.rank_peers gives (also run on
    PostgreSQL, whose path is another statement: tests/integration/test_rank_group_postgres.py; on SQLite in
    tests/unit/scoring/test_batching.py)."""
    rng = random.Random(11)
    now = datetime(2026, 11, 23, tzinfo=timezone.utc)
    for trial in range(30):
        with Session(engine) as session, session.begin():
            session.query(PeriodScore).delete()
            entries, previous = [], {}
            for i in range(rng.randint(1, 25)):
                sid = f"s{rng.randint(0, 99):02d}-{i}"
                score = rng.choice([None, 90.0, 85.5, 85.5, round(rng.uniform(60, 100), 2)])
                inputs, minimum = rng.randint(0, 4), rng.choice([None, 1, 2, 3])
                name = rng.choice(NAMES)
                entries.append(domain.RankEntry(sid, name, score, inputs, minimum))
                common = dict(subject_id=sid, period_kind="month", node="411502008001", name=name, tier="community",
                              subject_type="child_unit", scale=100, inputs=inputs, vetoed=False, veto_reasons=[],
                              policy_id="p", policy_version=1, explain={}, computed_at=now, revision=0)
                session.add(PeriodScore(period="2026-11", score=score, rank_min_inputs=minimum, peers=0,
                                        ranked=False, position=0, **common))
                if rng.random() < 0.5:
                    previous[sid] = rng.randint(1, 20)
                    session.add(PeriodScore(period="2026-10", score=50.0, rank=previous[sid], ranked=True,
                                            peers=20, position=previous[sid], **common))
            rank_group(session, "month", "2026-11", "community", "child_unit")
            rank_group(session, "month", "2026-11", "community", "child_unit")  # nothing left to change
            stored = {r.subject_id: (r.rank, bool(r.ranked), r.peers, r.movement, r.position)
                      for r in session.execute(select(PeriodScore).where(PeriodScore.period == "2026-11")).scalars()}
        expected = {r.subject_id: (r.rank, r.ranked, r.peers, r.movement, r.position)
                    for r in domain.rank_peers(entries, previous)}
        assert stored == expected, f"trial {trial}"
