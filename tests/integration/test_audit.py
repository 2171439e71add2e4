"""The audit log against a running service, the real PostgreSQL and the real RabbitMQ:
every write has its entry with the authenticated actor and the request id, reads have
none, the log cannot be rewritten through the service's database user, and an entry
edited behind the trigger's back is found by /audit/verify and by the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
from nameko.rpc import rpc
from nameko.standalone.rpc import ClusterRpcProxy
from pydantic import BaseModel
from sqlalchemy import String, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.contracts.errors import StateConflict
from services.plumbing import audit, operator_endpoints
from services.plumbing.auth import INSPECTOR, PUBLIC, signed_in
from services.plumbing.db import Database
from services.plumbing.http import api
from tests import support
from services.inspection.service import InspectionService
from tests.integration.test_inspection_service import COMMUNITY, inspection_body, register

pytestmark = pytest.mark.integration

STREET = "411502008000"        # the stack's home node (金牛山街道)
DISTRICT = "411502000000"      # 浉河区
OTHER_DISTRICT = "411503000000"


def entries_for(database_url: str) -> list[dict]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(audit.stored_entries(conn))
    finally:
        engine.dispose()


def execute_as_service(database_url: str, sql: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def cli_verify(database_url: str, config: dict | None = None, *args: str) -> subprocess.CompletedProcess:
    """The operator's command, with the stack's anchor file and key (none: a file of no anchors)."""
    anchors = (config or support.base_config("", ""))["AUDIT_ANCHOR_FILE"]
    env = {**os.environ, "AUDIT_ANCHOR_FILE": anchors, "AUDIT_ANCHOR_KEY": support.TEST_ANCHOR_KEY}
    return subprocess.run([sys.executable, "-m", "services.tools.audit", "verify", "--database-url", database_url,
                           *args], capture_output=True, text=True, timeout=60, cwd=support.ROOT, env=env)


def test_every_write_has_one_entry_with_the_actor_and_the_request_id(inspection_stack):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    subject, place = register(api)
    body = inspection_body(subject, place, idempotency_key="phone-1")
    created = api.post("/inspections", body, headers={"X-Request-Id": "gateway-req-0001"})
    replay = api.post("/inspections", body)  # a phone's retry sends the very same body
    wang = api.as_user("王芳", [("administrator", DISTRICT)], subject="u-wangfang")
    by_wang = wang.post("/subjects", {"subject_type": "department", "node": STREET, "name": "金牛山街道城管中队"})
    assert created.status_code == 201 and replay.status_code == 200 and by_wang.status_code == 201, by_wang.text
    assert created.headers["X-Request-Id"] == "gateway-req-0001"

    entries = entries_for(database_url)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]  # subject, place, inspection, replay, subject
    by_request = {e["request_id"]: e for e in entries}
    assert len(by_request) == 5
    first = entries[0]
    assert first["action"] == "POST /subjects" and first["path"] == "/subjects"
    assert first["actor_name"] == "测试管理员" and first["actor_subject"] == "user-测试管理员"
    assert first["actor_kind"] == "user" and first["service"] == "inspection" and first["node"] == STREET
    assert {"role": "administrator", "node": support.TEST_PROVINCE} in first["roles"]
    assert first["request"]["name"] == "周家山社区"
    assert any(v and v.get("name") == "周家山社区" for v in first["after"].values())

    inspection = by_request["gateway-req-0001"]
    assert inspection["action"] == "POST /inspections" and inspection["request"]["idempotency_key"] == "phone-1"
    retried = by_request[replay.headers["X-Request-Id"]]
    assert retried["action"] == "POST /inspections" and retried["after"] is None  # committed, changed nothing
    assert by_request[by_wang.headers["X-Request-Id"]]["actor_name"] == "王芳"
    assert by_request[by_wang.headers["X-Request-Id"]]["actor_subject"] == "u-wangfang"
    assert by_request[by_wang.headers["X-Request-Id"]]["roles"] == [{"role": "administrator", "node": DISTRICT}]

    # Reads and refused writes leave nothing.
    assert api.get("/subjects").status_code == 200
    assert api.get(f"/inspections/{created.json()['inspection_id']}").status_code == 200
    assert api.get("/audit").status_code == 200 and api.get("/audit/verify").status_code == 200
    bad = api.post("/inspections", inspection_body(subject, place, subject_id="no-such-subject"))
    assert bad.status_code == 422
    assert len(entries_for(database_url)) == 5

    verification = api.get("/audit/verify").json()
    assert verification["ok"] is True and verification["entries"] == 5 and verification["head_seq"] == 5


def test_administrators_query_the_log_of_their_nodes(inspection_stack):
    api = inspection_stack["api"]
    subject, _ = register(api)
    wang = api.as_user("王芳", [("administrator", DISTRICT)], subject="u-wangfang")
    response = wang.post("/subjects", {"subject_type": "department", "node": STREET, "name": "城管中队"})
    assert response.status_code == 201

    listed = api.get("/audit")
    assert listed.status_code == 200, listed.text
    assert [e["seq"] for e in listed.json()] == [3, 2, 1]  # newest first
    by_request = api.get("/audit", params={"request_id": response.headers["X-Request-Id"]}).json()
    assert [e["actor_name"] for e in by_request] == ["王芳"]
    assert [e["seq"] for e in api.get("/audit", params={"actor": "u-wangfang"}).json()] == [3]
    assert [e["seq"] for e in api.get("/audit", params={"actor": "王芳"}).json()] == [3]
    assert [e["seq"] for e in api.get("/audit", params={"action": "POST /places"}).json()] == [2]
    assert len(api.get("/audit", params={"action": "POST"}).json()) == 3
    assert [e["seq"] for e in api.get("/audit", params={"limit": 1, "offset": 1}).json()] == [2]
    first_at = listed.json()[-1]["at"]
    assert [e["seq"] for e in api.get("/audit", params={"until": first_at}).json()] == []
    assert len(api.get("/audit", params={"since": first_at}).json()) == 3

    # The district's administrator sees the street's entries; another district's does not.
    assert len(wang.get("/audit").json()) == 3
    other = api.as_user("李强", [("administrator", OTHER_DISTRICT)])
    assert other.get("/audit").status_code == 200 and other.get("/audit").json() == []

    inspector = api.as_user("赵敏", [("inspector", STREET), ("viewer", STREET)])
    assert inspector.get("/audit").status_code == 403
    assert inspector.get("/audit/verify").status_code == 403
    assert api.anonymous().get("/audit").status_code == 401
    assert api.anonymous().get("/audit/verify").status_code == 401

    for params, field in [({"since": "2026-11-23T08:00:00"}, "query.since"),        # no time zone
                          ({"since": "1999-12-31T23:00:00+08:00"}, "query.since"),  # outside the campaign years
                          ({"limit": "0"}, "query.limit"), ({"offset": "1000001"}, "query.offset"),
                          ({"nonsense": "1"}, "query.nonsense"),
                          ({"since": "2026-11-23T08:00:00+08:00", "until": "2026-11-23T07:00:00+08:00"},
                           "query.until")]:
        refused = api.get("/audit", params=params)
        assert refused.status_code == 422, (params, refused.text)
        assert field in [e["field"] for e in refused.json()["errors"]], (params, refused.text)


def test_only_the_stacks_office_and_the_offices_above_it_verify_its_log(inspection_stack):
    """Issue 27: any administrator read the entry count and head of another office's log."""
    api = inspection_stack["api"]
    register(api)
    for grants in ([("administrator", STREET)], [("administrator", DISTRICT)]):
        verified = api.as_user("本级管理员", grants).get("/audit/verify")
        assert verified.status_code == 200 and verified.json()["ok"] is True, verified.text
    for node in (OTHER_DISTRICT, "411502008001"):  # another district; a community below the stack
        refused = api.as_user("他处管理员", [("administrator", node)]).get("/audit/verify")
        assert refused.status_code == 403, refused.text
        assert refused.json()["errors"][0]["field"] == "node" and "entries" not in refused.json()


def test_the_services_database_user_cannot_rewrite_the_log(inspection_stack):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    register(api)
    for sql in ("UPDATE audit_log SET actor_name = '别人' WHERE seq = 1",
                "DELETE FROM audit_log WHERE seq = 2",
                "TRUNCATE audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            execute_as_service(database_url, sql)
    assert [e["seq"] for e in entries_for(database_url)] == [1, 2]
    assert cli_verify(database_url).returncode == 0


def test_an_entry_edited_behind_the_triggers_back_is_detected(inspection_stack):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    register(api)
    api.post("/subjects", {"subject_type": "department", "node": STREET, "name": "城管中队"})
    clean = cli_verify(database_url)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["head_seq"] == 3

    # A superuser switches the trigger off, makes someone else the actor, switches it on.
    execute_as_service(database_url, "ALTER TABLE audit_log DISABLE TRIGGER ALL")
    execute_as_service(database_url, "UPDATE audit_log SET actor_name = '别人' WHERE seq = 2")
    execute_as_service(database_url, "ALTER TABLE audit_log ENABLE TRIGGER ALL")

    verification = api.get("/audit/verify").json()
    assert verification["ok"] is False and verification["broken_seq"] == 2, verification
    assert verification["head_seq"] == 1
    broken = cli_verify(database_url)
    assert broken.returncode == 1 and "entry 2" in broken.stderr


def test_a_removed_entry_is_detected(inspection_stack):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    register(api)
    api.post("/subjects", {"subject_type": "department", "node": STREET, "name": "城管中队"})
    execute_as_service(database_url, "ALTER TABLE audit_log DISABLE TRIGGER ALL")
    execute_as_service(database_url, "DELETE FROM audit_log WHERE seq = 2")
    execute_as_service(database_url, "ALTER TABLE audit_log ENABLE TRIGGER ALL")
    verification = api.get("/audit/verify").json()
    assert verification["ok"] is False and verification["broken_seq"] == 2
    assert "missing" in verification["reason"]
    assert cli_verify(database_url).returncode == 1


@pytest.fixture
def anchored_stack(amqp_uri, database_url, tmp_path):
    """The inspection service anchoring its log's head every few tenths of a second."""
    port = support.free_port()
    config = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={"inspection": f"127.0.0.1:{port}"},
                                 AUDIT_ANCHOR_INTERVAL=0.3, AUDIT_ANCHOR_FILE=str(tmp_path / "audit-anchors.jsonl"))
    with support.running_services(config, InspectionService):
        yield {"api": support.ApiClient(f"http://127.0.0.1:{port}"), "config": config, "database_url": database_url,
               "anchors": tmp_path / "audit-anchors.jsonl"}


def anchored_seqs(path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["seq"] for line in path.read_text().splitlines() if line.strip()]


def three_anchored_entries(stack) -> None:
    api = stack["api"]
    register(api)
    assert api.post("/subjects", {"subject_type": "department", "node": STREET, "name": "城管中队"}).status_code == 201
    support.wait_until(lambda: 3 in anchored_seqs(stack["anchors"]), timeout=20)
    line = json.loads(stack["anchors"].read_text().splitlines()[-1])
    assert line["service"] == "inspection" and line["hash"] == entries_for(stack["database_url"])[2]["hash"]
    assert line["signature"].startswith("hmac-sha256:") and line["at"]
    verification = api.get("/audit/verify").json()
    assert verification["ok"] is True and verification["anchored_seq"] == 3 and verification["anchors"] >= 1
    clean = cli_verify(stack["database_url"], stack["config"])
    assert clean.returncode == 0, clean.stderr


def rewrite_from(database_url: str, seq: int, **changes) -> None:
    """What a superuser could do: edit entry `seq` and recompute every hash after it, so the
    chain is valid in itself."""
    rows = entries_for(database_url)
    prev = rows[seq - 2]["hash"] if seq > 1 else audit.GENESIS
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER ALL"))
            for row in rows[seq - 1:]:
                row = {**row, **(changes if row["seq"] == seq else {}), "prev_hash": prev}
                row["hash"] = prev = audit.entry_hash(row)
                conn.execute(audit.audit_log.update().where(audit.audit_log.c.seq == row["seq"]).values(**row))
            conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER ALL"))
    finally:
        engine.dispose()


def test_a_rewritten_chain_is_found_by_the_anchor_kept_outside_the_database(anchored_stack):
    api, database_url = anchored_stack["api"], anchored_stack["database_url"]
    three_anchored_entries(anchored_stack)

    rewrite_from(database_url, 2, actor_name="别人")
    with create_engine(database_url).connect() as conn:
        assert audit.verify(conn).ok  # valid in itself: only the anchor can tell

    verification = api.get("/audit/verify").json()
    # the first anchor at or after the edited entry (one may have been made at entry 2)
    assert verification["ok"] is False and verification["broken_seq"] in (2, 3), verification
    assert "审计日志被改写" in verification["reason"] and "rewritten" in verification["reason"]
    broken = cli_verify(database_url, anchored_stack["config"])
    assert broken.returncode == 1 and "审计日志被改写" in broken.stderr, broken.stderr


def test_a_cut_tail_is_found_by_the_anchor_kept_outside_the_database(anchored_stack):
    api, database_url = anchored_stack["api"], anchored_stack["database_url"]
    three_anchored_entries(anchored_stack)

    execute_as_service(database_url, "ALTER TABLE audit_log DISABLE TRIGGER ALL")
    execute_as_service(database_url, "DELETE FROM audit_log WHERE seq >= 2")
    execute_as_service(database_url, "ALTER TABLE audit_log ENABLE TRIGGER ALL")
    with create_engine(database_url).connect() as conn:
        assert audit.verify(conn).ok  # a shorter chain, valid in itself

    verification = api.get("/audit/verify").json()
    assert verification["ok"] is False and verification["broken_seq"] == 2 and verification["head_seq"] == 1
    assert "审计日志被截断" in verification["reason"] and "第 3 条" in verification["reason"], verification
    broken = cli_verify(database_url, anchored_stack["config"])
    assert broken.returncode == 1 and "审计日志被截断" in broken.stderr, broken.stderr

    # An anchor line edited to hide the cut does not pass either: it is signed.
    path = anchored_stack["anchors"]
    forged = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**a, "seq": 1}) + "\n" for a in forged))
    refused = cli_verify(database_url, anchored_stack["config"])
    assert refused.returncode == 1 and "签名不对" in refused.stderr, refused.stderr


def test_concurrent_writes_keep_one_chain(inspection_stack):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    statuses = []

    def write(i):
        statuses.append(api.post("/subjects", {"subject_type": "department", "node": COMMUNITY,
                                               "name": f"周家山社区网格{i}"}).status_code)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * 8
    assert [e["seq"] for e in entries_for(database_url)] == list(range(1, 9))
    assert api.get("/audit/verify").json() == {"ok": True, "entries": 8, "head_seq": 8,
                                               "head_hash": entries_for(database_url)[-1]["hash"],
                                               "broken_seq": None, "reason": None, "anchors": 0,
                                               "anchored_seq": None}


def test_a_sealed_log_is_out_of_the_writers_reach(inspection_stack, pg_admin):
    """After `seal`, a service user that does not own the table may read and append only:
    it can neither rewrite entries nor switch the trigger off, nor drop the table even as
    the owner of the database (and so of its schema)."""
    from urllib.parse import urlsplit, urlunsplit

    from services.tools.audit import seal

    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    register(api)
    writer, owner = support.unique_name("cw_writer"), support.unique_name("cw_audit")
    database = urlsplit(database_url).path.lstrip("/")
    execute_as_service(database_url, f'CREATE ROLE "{writer}" LOGIN')
    execute_as_service(database_url, f'ALTER DATABASE "{database}" OWNER TO "{writer}"')
    try:
        assert seal(database_url, writer=writer, owner=owner) is False
        parts = urlsplit(database_url)
        as_writer = urlunsplit((parts.scheme, f"{writer}@{parts.hostname}:{parts.port}", parts.path, "", ""))
        engine = create_engine(as_writer)
        try:
            with engine.begin() as conn:
                audit.append(conn, service="inspection", actor_subject="u", actor_name="u", actor_kind="user",
                             roles=[], node=STREET, action="POST /subjects", path="/subjects", request_id="r-w")
            for sql, refusal in [("UPDATE audit_log SET actor_name = '别人' WHERE seq = 1", "permission denied"),
                                 ("DELETE FROM audit_log", "permission denied"),
                                 ("ALTER TABLE audit_log DISABLE TRIGGER ALL", "must be owner"),
                                 ("DROP TABLE audit_log", "cannot be dropped"),
                                 ("DROP FUNCTION audit_log_append_only() CASCADE", "cannot be dropped"),
                                 ("DROP SCHEMA public CASCADE", "cannot be dropped")]:
                with pytest.raises(DBAPIError, match=refusal):
                    with engine.begin() as conn:
                        conn.execute(text(sql))
        finally:
            engine.dispose()
        assert cli_verify(database_url).returncode == 0
        assert [e["request_id"] for e in entries_for(database_url)][-1] == "r-w"
    finally:
        execute_as_service(database_url, f'ALTER DATABASE "{database}" OWNER TO CURRENT_USER')
        execute_as_service(database_url, "DROP EVENT TRIGGER IF EXISTS audit_log_keep")
        execute_as_service(database_url, "DROP SCHEMA IF EXISTS chuangwei_audit CASCADE")
        execute_as_service(database_url, f'DROP OWNED BY "{writer}", "{owner}"')
        execute_as_service(database_url, f'DROP ROLE IF EXISTS "{writer}"')
        execute_as_service(database_url, f'DROP ROLE IF EXISTS "{owner}"')


# --- the capture itself, on a probe service built from the shared plumbing only ---

class ProbeBase(DeclarativeBase):
    pass


class Note(ProbeBase):
    __tablename__ = "probe_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


class NoteIn(BaseModel):
    text: str
    password: str | None = None


class AuditProbe(operator_endpoints.OperatorEndpoints):
    """Writes of every shape a service has: public and signed-in routes, two
    transactions, none, a commit then an error, a delete, a read that commits."""
    name = "probe"
    db = Database()

    @api("POST", "/notes", body=NoteIn, status=201, access=PUBLIC)
    def add_note(self, request, body: NoteIn):
        with self.db.transaction() as session:
            note = Note(text=body.text)
            session.add(note)
            session.flush()
            return {"id": note.id}

    @api("POST", "/public-notes", body=NoteIn, status=201, access=PUBLIC)
    def add_public_note(self, request, body: NoteIn):
        return self.add_note(request, body)

    @api("PUT", "/notes/<int:note_id>", body=NoteIn, access=signed_in(INSPECTOR))
    def edit_note(self, request, note_id: int, body: NoteIn, principal):
        with self.db.transaction() as session:
            session.get(Note, note_id).text = body.text
            audit.describe(session, node=COMMUNITY, target=f"note:{note_id}")
        return {"id": note_id}

    @api("DELETE", "/notes/<int:note_id>", status=204, raw=True, access=signed_in())
    def delete_note(self, request, note_id: int, principal):
        with self.db.transaction() as session:
            session.delete(session.get(Note, note_id))
        return ""

    @api("POST", "/twice", body=NoteIn, access=signed_in())
    def twice(self, request, body: NoteIn, principal):
        for suffix in ("一", "二"):
            with self.db.transaction() as session:
                session.add(Note(text=body.text + suffix))
        return {"ok": True}

    @api("POST", "/ping", body=NoteIn, access=signed_in())
    def ping(self, request, body: NoteIn, principal):
        return {"pong": body.text}

    @api("POST", "/commit-then-fail", body=NoteIn, access=signed_in())
    def commit_then_fail(self, request, body: NoteIn, principal):
        with self.db.transaction() as session:
            session.add(Note(text=body.text))
        raise StateConflict("text", "committed, then refused the rest")

    @rpc
    def write_rpc(self, text_: str) -> int:
        with self.db.transaction() as session:
            note = Note(text=text_)
            session.add(note)
            session.flush()
            return note.id

    @rpc
    def count_rpc(self) -> int:
        return self.db.session.query(Note).count()

    @api("GET", "/notes-count", access=signed_in())
    def count_notes(self, request, principal):
        with self.db.transaction() as session:  # a read that commits: still a read
            return {"count": session.query(Note).count()}


@pytest.fixture
def probe(amqp_uri, database_url):
    engine = create_engine(database_url)
    ProbeBase.metadata.create_all(engine)
    engine.dispose()
    port = support.free_port()
    config = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={"probe": f"127.0.0.1:{port}"})
    with support.running_services(config, AuditProbe):
        client = support.ApiClient(f"http://127.0.0.1:{port}")
        client.config = config
        yield client


def test_every_kind_of_write_is_captured_by_the_plumbing(probe, database_url):
    def entry_of(response) -> list[dict]:
        return [e for e in entries_for(database_url) if e["request_id"] == response.headers["X-Request-Id"]]

    anonymous = probe.anonymous().post("/notes", {"text": "匿名", "password": "hunter2"})
    forged = support.ApiClient(probe.base_url, token="not-a-token").post("/notes", {"text": "伪造"})
    signed = probe.post("/notes", {"text": "管理员"})
    public = probe.post("/public-notes", {"text": "公开"})
    assert [r.status_code for r in (anonymous, forged, signed, public)] == [201] * 4
    [a] = entry_of(anonymous)
    assert (a["actor_subject"], a["actor_name"], a["actor_kind"], a["roles"]) == ("anonymous", "anonymous",
                                                                               "anonymous", [])
    assert a["request"] == {"text": "匿名", "password": audit.MASK}
    assert "hunter2" not in json.dumps(entries_for(database_url), ensure_ascii=False, default=str)
    assert a["after"] == {f"probe_notes/{anonymous.json()['id']}": {"id": anonymous.json()["id"], "text": "匿名"}}
    assert entry_of(forged)[0]["actor_subject"] == "anonymous"  # a token that does not verify proves nobody
    # A public route still records whom a valid token proves.
    assert entry_of(signed)[0]["actor_name"] == "测试管理员"
    assert entry_of(public)[0]["actor_name"] == "测试管理员"

    inspector = probe.as_user("赵敏", [("inspector", STREET)], subject="u-zhaomin")
    edited = inspector.put(f"/notes/{signed.json()['id']}", {"text": "改过"})
    assert edited.status_code == 200, edited.text
    [e] = entry_of(edited)
    assert e["actor_subject"] == "u-zhaomin" and e["roles"] == [{"role": "inspector", "node": STREET}]
    assert e["action"] == "PUT /notes/<int:note_id>" and e["path"] == f"/notes/{signed.json()['id']}"
    assert e["node"] == COMMUNITY and e["target"] == f"note:{signed.json()['id']}"
    key = f"probe_notes/{signed.json()['id']}"
    assert e["before"] == {key: {"text": "管理员"}} and e["after"] == {key: {"text": "改过"}}

    deleted = probe.request("DELETE", f"/notes/{public.json()['id']}")
    assert deleted.status_code == 204
    [d] = entry_of(deleted)
    assert d["action"] == "DELETE /notes/<int:note_id>"
    assert d["before"][f"probe_notes/{public.json()['id']}"]["text"] == "公开"
    assert d["after"] == {f"probe_notes/{public.json()['id']}": None}

    twice = probe.post("/twice", {"text": "两次"})
    assert twice.status_code == 200 and len(entry_of(twice)) == 2  # one entry per committed transaction

    failed = probe.post("/commit-then-fail", {"text": "先提交"})
    assert failed.status_code == 409 and len(entry_of(failed)) == 1  # what was committed is on record

    ping = probe.post("/ping", {"text": "不碰数据库"})
    assert ping.status_code == 200
    [p] = support.wait_until(lambda: entry_of(ping), message="the entry of a write that committed nothing")
    assert p["action"] == "POST /ping" and p["request"] == {"text": "不碰数据库", "password": None}
    assert p["before"] is None and p["after"] is None

    before_reads = len(entries_for(database_url))
    assert probe.get("/notes-count").status_code == 200
    refused = probe.anonymous().put(f"/notes/{signed.json()['id']}", {"text": "匿名改"})
    assert refused.status_code == 401
    assert len(entries_for(database_url)) == before_reads == 10

    # An administrator of the community sees the entry described as the community's only.
    community_admin = probe.as_user("周主任", [("administrator", COMMUNITY)])
    assert [e["request_id"] for e in community_admin.get("/audit").json()] == [edited.headers["X-Request-Id"]]
    neighbour = probe.as_user("钱主任", [("administrator", "411502008002")])
    assert neighbour.get("/audit").json() == []
    assert len(probe.get("/audit", params={"limit": 1000}).json()) == 10
    assert probe.get("/audit/verify").json()["ok"] is True


def test_notify_writes_templates_rules_and_contacts_are_on_record(amqp_uri, database_url):
    from services.notify.service import NotifyService
    port = support.free_port()
    config = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={"notify": f"127.0.0.1:{port}"},
                                 NOTIFY_BULLETIN_SCHEDULE="false")
    with support.running_services(config, NotifyService):
        api = support.ApiClient(f"http://127.0.0.1:{port}")
        writes = [
            api.put(f"/templates/{STREET}/urge.md", {"source": "请立即整改：{{ task.item_text }}\n"}),
            api.put(f"/templates/{STREET}/urge.md", {"source": "限期整改：{{ task.item_text }}\n"}),
            api.put(f"/rules/{STREET}", {"document": {"rules": []}}),
            api.post("/contacts", {"owner_kind": "node", "owner_id": STREET, "node": STREET, "name": "金牛山街道创卫办",
                                   "inbox_user": "jns.cwb",
                                   "webhook_url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k-123"}),
            api.request("DELETE", f"/templates/{STREET}/urge.md"),
        ]
        assert [w.status_code for w in writes] == [200, 200, 200, 201, 204], [w.text for w in writes]
        assert api.get(f"/templates/{STREET}/urge.md").status_code == 200
        assert api.get("/contacts").status_code == 200

        listed = api.get("/audit", params={"service": "notify", "limit": 1000}).json()
        assert [(e["action"], e["request_id"]) for e in reversed(listed)] == [
            ("PUT /templates/<node>/<name>", writes[0].headers["X-Request-Id"]),
            ("PUT /templates/<node>/<name>", writes[1].headers["X-Request-Id"]),
            ("PUT /rules/<node>", writes[2].headers["X-Request-Id"]),
            ("POST /contacts", writes[3].headers["X-Request-Id"]),
            ("DELETE /templates/<node>/<name>", writes[4].headers["X-Request-Id"])]
        assert all(e["actor_name"] == "测试管理员" and e["service"] == "notify" for e in listed)
        contact = listed[1]
        assert "k-123" not in json.dumps(contact, ensure_ascii=False)  # a bot's key is a credential
        assert contact["request"]["webhook_url"].endswith("?key=***")
        assert any(v and v.get("name") == "金牛山街道创卫办" for v in contact["after"].values())
        assert api.get("/audit/verify").json()["entries"] == 5


def test_rpc_calls_that_commit_are_on_record_with_the_calling_program(probe, database_url):
    with ClusterRpcProxy(probe.config) as cluster:
        note_id = cluster.probe.write_rpc("经由RPC")
        assert cluster.probe.count_rpc() == 1
    [entry] = entries_for(database_url)
    assert entry["action"] == "RPC write_rpc" and entry["actor_kind"] == "rpc"
    assert entry["actor_subject"] == "rpc:standalone_rpc_proxy" and entry["request"] == {"args": ["经由RPC"], "kwargs": {}}
    assert entry["after"] == {f"probe_notes/{note_id}": {"id": note_id, "text": "经由RPC"}}
