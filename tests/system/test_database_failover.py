"""A PostgreSQL failover (issue 12), on a primary and a hot standby of the test's own: with
the connection settings infra/README.md documents (both hosts in the URL,
target_session_attrs=read-write, pool_pre_ping) a running service answers 503 while no
primary is up and then writes to the promoted standby, with what was committed before."""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from services.inspection.service import InspectionService
from tests import support
from tests.nodes import PostgresCluster

pytestmark = pytest.mark.system

SUBJECT = {"subject_type": "child_unit", "node": "411502008001", "name": "周家山社区"}


def read(url: str, sql: str):
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def test_a_service_follows_the_primary_to_its_promoted_standby(amqp_uri):
    with PostgresCluster() as primary:
        primary.create_database("chuangwei")
        with PostgresCluster(standby_of=primary) as standby:
            url = (f"postgresql+psycopg2://postgres@/chuangwei?host=127.0.0.1:{primary.port}"
                   f"&host=127.0.0.1:{standby.port}&target_session_attrs=read-write&connect_timeout=3")
            port = support.free_port()
            config = support.base_config(amqp_uri, url, WEB_ADDRESSES={"inspection": f"127.0.0.1:{port}"})
            with support.running_services(config, InspectionService):
                api = support.ApiClient(f"http://127.0.0.1:{port}")
                before = api.post("/subjects", dict(SUBJECT, name="失效切换前"))
                assert before.status_code == 201, before.text
                standby_url = f"postgresql+psycopg2://postgres@127.0.0.1:{standby.port}/chuangwei"
                support.wait_until(lambda: read(standby_url, "SELECT count(*) FROM inspection_subjects") == 1,
                                   timeout=30, message="the subject replicated to the standby")
                assert read(standby_url, "SELECT pg_is_in_recovery()") is True

                primary.stop("immediate")  # the primary's machine dies
                down = api.post("/subjects", dict(SUBJECT, name="无主库时"))
                assert down.status_code == 503 and down.headers["Retry-After"].isdigit(), down.text
                standby.promote()

                after = support.wait_until(
                    lambda: (lambda r: r if r.status_code == 201 else None)(
                        api.post("/subjects", dict(SUBJECT, name="失效切换后"))),
                    timeout=60, message="writes reaching the promoted standby")
                names = {s["name"] for s in api.get("/subjects").json()}
                assert names == {"失效切换前", "失效切换后"}, names
                assert after.json()["name"] == "失效切换后"
                assert read(standby_url, "SELECT pg_is_in_recovery()") is False
