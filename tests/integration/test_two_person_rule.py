"""The two-person rule against one administrator acting alone (issue 27, finding 1): the
accounts service issues every token and the scoring service verifies them against accounts'
JWKS, as in a stack. A proposal is approved only through another person's own interactive
sign-in, never an API token of the proposer's, nor an account or grant the proposer made."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests

from services.accounts.service import AccountsService
from services.scoring.service import ScoringService
from tests import support
from tests.integration.test_accounts_service import PASSWORD, make_user

pytestmark = pytest.mark.integration

STREET = "411502008000"  # 金牛山街道
COMMUNITY = "411502008001"


@pytest.fixture
def stack(amqp_uri, database_url):
    ports = {"accounts": support.free_port(), "scoring": support.free_port()}
    config = support.base_config(
        amqp_uri, database_url, WEB_ADDRESSES={name: f"127.0.0.1:{port}" for name, port in ports.items()},
        AUTH_JWKS_URL=f"http://127.0.0.1:{ports['accounts']}/.well-known/jwks.json", ACCOUNTS_ACCESS_TTL=120)
    config.pop("AUTH_JWKS")  # every service trusts what accounts publishes
    with support.running_services(config, AccountsService, ScoringService):
        # Two administrators made by the operator (create-admin), and a viewer.
        make_user(database_url, "li", STREET, [("administrator", STREET)], name="李强")
        make_user(database_url, "zhao", STREET, [("administrator", STREET)], name="赵敏")
        make_user(database_url, "wang", STREET, [("viewer", STREET)], name="王芳")
        yield {"accounts": f"http://127.0.0.1:{ports['accounts']}",
               "scoring": f"http://127.0.0.1:{ports['scoring']}"}


def login(stack, username: str) -> str:
    response = requests.post(f"{stack['accounts']}/auth/login", json={"username": username, "password": PASSWORD},
                             timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def fields(response) -> list[str]:
    return [e["field"] for e in response.json().get("errors", [])]


def test_one_administrator_cannot_approve_its_own_proposal_by_any_detour(stack):
    li = login(stack, "li")
    li_accounts = support.ApiClient(stack["accounts"], token=li)
    li_scoring = support.ApiClient(stack["scoring"], token=li)
    document = dict(li_scoring.get(f"/policies/{STREET}").json()["document"], note="优秀线调整")
    proposal = li_scoring.put(f"/policies/{STREET}", document)
    assert proposal.status_code == 202, proposal.text
    approval_id = proposal.json()["approval_id"]
    assert proposal.json()["proposed_by"] == "李强 (li)"

    # 1. An API token carrying li's own administrator grant, exchanged for an access token.
    created = li_accounts.post("/api-tokens", {"name": "批量脚本", "grants": [{"role": "administrator", "node": STREET}]})
    assert created.status_code == 201, created.text
    exchanged = requests.post(f"{stack['accounts']}/auth/token", json={"token": created.json()["secret"]}, timeout=30)
    assert exchanged.status_code == 200, exchanged.text
    machine = support.ApiClient(stack["scoring"], token=exchanged.json()["access_token"])
    refused = machine.post(f"/approvals/{approval_id}/approve", {})
    assert refused.status_code == 403 and fields(refused) == ["approval_id"], refused.text
    assert "API 令牌" in refused.json()["errors"][0]["reason"]

    # 2. A second administrator account li creates now, signing in itself.
    made = li_accounts.post("/users", {"username": "puppet", "display_name": "马甲", "node": STREET,
                                       "password": PASSWORD, "grants": [{"role": "administrator", "node": STREET}]})
    assert made.status_code == 201, made.text
    puppet = support.ApiClient(stack["scoring"], token=login(stack, "puppet"))
    refused = puppet.post(f"/approvals/{approval_id}/approve", {})
    assert refused.status_code == 403 and fields(refused) == ["approval_id"], refused.text

    # 3. An older account (王芳, a viewer) li makes an administrator now.
    granted = li_accounts.post("/users/wang/grants", {"role": "administrator", "node": STREET})
    assert granted.status_code == 201, granted.text
    wang = support.ApiClient(stack["scoring"], token=login(stack, "wang"))
    refused = wang.post(f"/approvals/{approval_id}/approve", {})
    assert refused.status_code == 403 and fields(refused) == ["approval_id"], refused.text

    assert li_scoring.get(f"/policies/{STREET}").json()["version"] == 1
    assert [a["approval_id"] for a in li_scoring.get("/approvals").json()] == [approval_id]

    # Another person, whose account and grant predate the proposal and are not li's doing,
    # approves through her own sign-in; the audit names both people.
    zhao = support.ApiClient(stack["scoring"], token=login(stack, "zhao"))
    approved = zhao.post(f"/approvals/{approval_id}/approve", {"note": "经领导小组同意"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["decided_by"] == "赵敏 (zhao)" and approved.json()["proposed_by"] == "李强 (li)"
    entry = zhao.get("/audit", params={"request_id": approved.headers["X-Request-Id"]}).json()[0]
    assert entry["actor_subject"] == "zhao"
    assert entry["after"]["two_person_rule"] == {"proposed_by": "李强 (li)", "approved_by": "赵敏 (zhao)"}


def test_an_api_token_acts_as_the_person_who_owns_it(stack):
    """What a machine does is recorded with the person who answers for its token, and a
    proposal made through a token cannot be approved by that same person either."""
    li = login(stack, "li")
    created = support.ApiClient(stack["accounts"], token=li).post(
        "/api-tokens", {"name": "批量脚本", "grants": [{"role": "administrator", "node": STREET}]})
    token_id = created.json()["token_id"]
    exchanged = requests.post(f"{stack['accounts']}/auth/token", json={"token": created.json()["secret"]}, timeout=30)
    machine = support.ApiClient(stack["scoring"], token=exchanged.json()["access_token"])
    document = dict(machine.get(f"/policies/{STREET}").json()["document"], note=f"脚本提议 {uuid.uuid4().hex[:6]}")
    proposal = machine.put(f"/policies/{STREET}", document)
    assert proposal.status_code == 202, proposal.text
    assert proposal.json()["proposed_by"].startswith("李强 (li; API 令牌「批量脚本」token:")
    entry = machine.get("/audit", params={"request_id": proposal.headers["X-Request-Id"]}).json()[0]
    assert entry["actor_subject"] == f"token:{token_id}"
    assert entry["actor_name"] == f"李强 (li; API 令牌「批量脚本」token:{token_id})"

    li_scoring = support.ApiClient(stack["scoring"], token=li)
    refused = li_scoring.post(f"/approvals/{proposal.json()['approval_id']}/approve", {})
    assert refused.status_code == 403 and fields(refused) == ["approval_id"], refused.text
    assert "提议人" in refused.json()["errors"][0]["reason"]


def test_accounts_made_before_the_rule_know_who_made_them(database_url):
    """The migration that adds who made an account or a grant fills it in for the rows that
    exist, from the labels they kept, so an older sock puppet is no way around the rule."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parents[2] / "services" / "accounts"
                                                / "migrations"))
    cfg.attributes["version_table"] = "alembic_version_accounts"
    try:
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "7fefa569d70e")
            for user_id, username, by in (("u1", "puppet", "李强 (li)"), ("u2", "zhao", "create-admin (operator command)")):
                connection.execute(text(
                    "insert into accounts_users (id, username, display_name, node, password_hash, disabled, "
                    "created_at, created_by, updated_at, password_changed_at) values (:id, :username, :username, "
                    "'411502008000', 'x', false, now(), :by, now(), now())"), {"id": user_id, "username": username,
                                                                                "by": by})
                connection.execute(text(
                    "insert into accounts_grants (user_id, role, node, granted_at, granted_by) values "
                    "(:id, 'administrator', '411502008000', now(), :by)"), {"id": user_id, "by": by})
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
        with engine.connect() as connection:
            assert connection.execute(text(
                "select username, created_by_subject from accounts_users order by id")).all() == [
                ("puppet", "li"), ("zhao", None)]
            assert connection.execute(text(
                "select user_id, granted_by_subject from accounts_grants order by user_id")).all() == [
                ("u1", "li"), ("u2", None)]
    finally:
        engine.dispose()
