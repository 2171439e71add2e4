"""rank_group on PostgreSQL (one UPDATE … FROM … RETURNING) ranks as the domain rules do, as
its SQLite path does in tests/unit/scoring/test_batching.py (tests/ranking_rules.py)."""
import pytest
from sqlalchemy import create_engine

from services.scoring.models import Base
from tests.ranking_rules import ranks_as_the_domain_rules_do

pytestmark = pytest.mark.integration


def test_postgresql_ranks_a_group_as_the_domain_rules_do(database_url):
    engine = create_engine(database_url)
    try:
        Base.metadata.create_all(engine)
        ranks_as_the_domain_rules_do(engine)
    finally:
        engine.dispose()
