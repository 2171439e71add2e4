"""The audit log's hash chain, its capture of ORM changes and its append-only triggers (SQLite)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import String, create_engine, select, text
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from services.plumbing import audit
from services.plumbing.db import run_migrations


class Base(DeclarativeBase):
    pass


class Contact(Base):
    __tablename__ = "unit_contact"
    contact_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/audit.db")
    run_migrations(engine, audit.MIGRATIONS, audit.VERSION_TABLE)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine):
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    audit.install(factory)
    return factory


def context(**overrides) -> audit.AuditContext:
    values = dict(service="notify", method="PUT", route="/contacts/<contact_id>", path="/contacts/C1",
                  request_id="req-1", actor=audit.Actor("u-wang", "王芳", "user",
                                                          [{"role": "administrator", "node": "411502000000"}]),
                  home="411502000000", request={"email": "a@example.cn"})
    values.update(overrides)
    return audit.AuditContext(**values)


def append_plain(conn, n: int) -> None:
    for i in range(n):
        audit.append(conn, service="inspection", actor_subject=f"u{i}", actor_name=f"用户{i}", actor_kind="user",
                     roles=[], node="411502008000", action="POST /subjects", path="/subjects",
                     request_id=f"r{i}", request={"name": f"周家山社区{i}"}, after={"n": i})


def entries(engine) -> list[dict]:
    with engine.connect() as conn:
        return list(audit.stored_entries(conn))


def tamper(engine, sql: str) -> None:
    """What someone with the file (or a superuser) could do behind the triggers' back."""
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_log_no_update"))
        conn.execute(text("DROP TRIGGER audit_log_no_delete"))
        conn.execute(text(sql))


def test_the_migrations_build_the_table_the_module_describes(engine):
    run_migrations(engine, audit.MIGRATIONS, audit.VERSION_TABLE)  # idempotent
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": audit.VERSION_TABLE})
        diff = [d for d in compare_metadata(ctx, audit.metadata) if d[0] != "remove_table"]
        assert diff == []


def test_an_intact_chain_verifies_and_reports_its_head(engine):
    with engine.begin() as conn:
        append_plain(conn, 5)
    rows = entries(engine)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev_hash"] == audit.GENESIS
    assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, 5))
    with engine.connect() as conn:
        result = audit.verify(conn)
    assert result.ok and result.entries == 5 and result.head_seq == 5 and result.head_hash == rows[-1]["hash"]


def test_an_empty_log_verifies(engine):
    with engine.connect() as conn:
        assert audit.verify(conn) == audit.Verification(True, 0)


def test_updates_and_deletes_are_refused(engine):
    with engine.begin() as conn:
        append_plain(conn, 2)
    for sql in ("UPDATE audit_log SET actor_name = '别人' WHERE seq = 1", "DELETE FROM audit_log WHERE seq = 2"):
        with pytest.raises(DatabaseError, match="append-only"):
            with engine.begin() as conn:
                conn.execute(text(sql))
    with engine.connect() as conn:
        assert audit.verify(conn).ok


def test_an_edited_entry_is_detected(engine):
    with engine.begin() as conn:
        append_plain(conn, 4)
    tamper(engine, "UPDATE audit_log SET actor_name = '别人' WHERE seq = 3")
    with engine.connect() as conn:
        result = audit.verify(conn)
    assert not result.ok and result.broken_seq == 3 and "altered" in result.reason
    assert result.head_seq == 2


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link():
    rows = []
    prev = audit.GENESIS
    for seq in (1, 2, 3):
        entry = {"seq": seq, "service": "tasks", "at": datetime(2026, 11, 23, 3, seq, tzinfo=timezone.utc),
                 "actor_subject": "u", "actor_name": "李强", "actor_kind": "user", "roles": [], "node": None,
                 "target": None, "action": "POST /tasks/<task_id>/verify", "path": f"/tasks/T{seq}/verify",
                 "request_id": f"r{seq}", "request": None, "before": None, "after": {"status": "verified"},
                 "prev_hash": prev}
        entry["hash"] = prev = audit.entry_hash(entry)
        rows.append(entry)
    assert audit.verify_entries(rows).ok
    forged = dict(rows[1], after={"status": "rejected"})
    forged["hash"] = audit.entry_hash(forged)
    result = audit.verify_entries([rows[0], forged, rows[2]])
    assert not result.ok and result.broken_seq == 3 and "link" in result.reason


def test_a_removed_entry_is_detected(engine):
    with engine.begin() as conn:
        append_plain(conn, 4)
    tamper(engine, "DELETE FROM audit_log WHERE seq = 2")
    with engine.connect() as conn:
        result = audit.verify(conn)
    assert not result.ok and result.broken_seq == 2 and "missing" in result.reason


def test_a_removed_first_entry_is_detected(engine):
    with engine.begin() as conn:
        append_plain(conn, 2)
    tamper(engine, "DELETE FROM audit_log WHERE seq = 1")
    with engine.connect() as conn:
        assert audit.verify(conn).broken_seq == 1


def test_a_commit_of_an_audited_session_appends_rows_before_and_after(factory, engine):
    with factory() as session:
        audit.attach(session, context(method="POST", route="/contacts", path="/contacts"))
        session.add(Contact(contact_id="C1", email="old@example.cn", password_hash="argon2-secret"))
        session.commit()
        contact = session.get(Contact, "C1")
        contact.email = "new@example.cn"
        session.commit()
        session.delete(contact)
        session.commit()
    created, changed, deleted = entries(engine)
    assert created["actor_subject"] == "u-wang" and created["actor_name"] == "王芳"
    assert created["roles"] == [{"role": "administrator", "node": "411502000000"}]
    assert created["action"] == "POST /contacts" and created["node"] == "411502000000"
    assert created["after"] == {"unit_contact/C1": {"contact_id": "C1", "email": "old@example.cn",
                                                    "password_hash": audit.MASK}}
    assert created["before"] == {"unit_contact/C1": None}
    assert changed["before"] == {"unit_contact/C1": {"email": "old@example.cn"}}
    assert changed["after"] == {"unit_contact/C1": {"email": "new@example.cn"}}
    assert deleted["after"] == {"unit_contact/C1": None}
    assert deleted["before"]["unit_contact/C1"]["email"] == "new@example.cn"
    with engine.connect() as conn:
        assert audit.verify(conn).ok


def test_a_commit_that_changes_nothing_still_gets_exactly_one_entry(factory, engine):
    with factory() as session:
        ctx = context()
        audit.attach(session, ctx)
        session.execute(select(Contact)).all()
        session.commit()
    assert len(entries(engine)) == 1 and ctx.entries == 1
    assert entries(engine)[0]["before"] is None and entries(engine)[0]["after"] is None


def test_a_rolled_back_write_leaves_no_entry_and_no_gap(factory, engine):
    with factory() as session:
        audit.attach(session, context())
        session.add(Contact(contact_id="C1", email="a@example.cn"))
        session.commit()
    with factory() as session:
        audit.attach(session, context())
        session.add(Contact(contact_id="C1", email="clash@example.cn"))  # same key: the flush fails
        with pytest.raises(IntegrityError, match="UNIQUE constraint failed"):
            session.commit()
        session.rollback()
    with factory() as session:
        audit.attach(session, context())
        session.add(Contact(contact_id="C2", email="b@example.cn"))
        session.commit()
    assert [e["seq"] for e in entries(engine)] == [1, 2]
    with engine.connect() as conn:
        assert audit.verify(conn).ok


def test_sessions_without_an_audit_context_append_nothing(factory, engine):
    with factory() as session:  # an event consumer or a timer
        session.add(Contact(contact_id="C1", email="a@example.cn"))
        session.commit()
    assert entries(engine) == []


def test_describe_replaces_the_automatic_record(factory, engine):
    with factory() as session:
        audit.attach(session, context())
        session.add(Contact(contact_id="C1", email="a@example.cn"))
        audit.describe(session, node="411502008001", target="contact:C1", before={"email": None},
                       after={"email": "a@example.cn", "token": "t0ps3cret"})
        session.commit()
        session.get(Contact, "C1").email = "b@example.cn"
        session.commit()  # the description held for one transaction only
    first, second = entries(engine)
    assert first["node"] == "411502008001" and first["target"] == "contact:C1"
    assert first["after"] == {"email": "a@example.cn", "token": audit.MASK}
    assert second["node"] == "411502000000" and second["target"] is None
    assert second["after"] == {"unit_contact/C1": {"email": "b@example.cn"}}


def test_describe_outside_an_audited_request_is_harmless(factory, engine):
    with factory() as session:
        audit.describe(session, node="411502008001")
        session.commit()
    assert entries(engine) == []


def test_secrets_are_masked_and_long_texts_shortened():
    body = {"name": "周家山社区", "password": "hunter2", "nested": [{"refresh_token": "x", "webhook_secret": "y"}],
            "note": "长" * (audit.MAX_TEXT + 10), "ratio": float("nan"), "empty_token": None}
    clean = audit.sanitise(body)
    assert clean["password"] == audit.MASK
    assert clean["nested"] == [{"refresh_token": audit.MASK, "webhook_secret": audit.MASK}]
    assert clean["note"].startswith("长" * audit.MAX_TEXT) and f"{audit.MAX_TEXT + 10} chars" in clean["note"]
    assert clean["ratio"] == "nan" and clean["empty_token"] is None
    assert body["password"] == "hunter2"  # the caller's value is left alone
    audit.canonical_json(clean)  # storable and hashable


def test_the_node_filter_follows_the_division_tree(engine):
    with engine.begin() as conn:
        for node in ("411502008001", "411502009001", "411503001001", None):
            audit.append(conn, service="tasks", actor_subject="u", actor_name="u", actor_kind="user", roles=[],
                         node=node, action="POST /tasks", path="/tasks", request_id=f"r-{node}")
    with engine.connect() as conn:
        street = {e["node"] for e in audit.query(conn, nodes=["411502008000"])}
        district = {e["node"] for e in audit.query(conn, nodes=["411502000000"])}
        by_request = audit.query(conn, request_id="r-411503001001")
    assert street == {"411502008001", None}
    assert district == {"411502008001", "411502009001", None}
    assert [e["node"] for e in by_request] == ["411503001001"]


@pytest.mark.parametrize("url, expected", [
    ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc-123", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=***"),
    ("https://oapi.dingtalk.com/robot/send?access_token=abc&sign=def&timestamp=1",
     "https://oapi.dingtalk.com/robot/send?access_token=***&sign=***&timestamp=1"),
    ("smtp://mailer:s3cret@mail.example.cn:25", "smtp://mailer:***@mail.example.cn:25"),
    ("https://bot.example.cn/hook?channel=cwb", "https://bot.example.cn/hook?channel=cwb"),
    ("周家山路12号", "周家山路12号"),
])
def test_credentials_in_urls_are_masked(url, expected):
    assert audit.sanitise({"webhook_url": url}) == {"webhook_url": expected}
    assert audit.sanitise([url]) == [expected]


def test_the_cli_migrates_then_verifies_and_fails_on_a_broken_chain(tmp_path, capsys):
    from services.tools.audit import main
    url = f"sqlite:///{tmp_path}/cli.db"
    assert main(["migrate", "--database-url", url]) == 0
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            append_plain(conn, 3)
        assert main(["verify", "--database-url", url]) == 0
        assert '"head_seq": 3' in capsys.readouterr().out
        tamper(engine, "UPDATE audit_log SET request_id = 'forged' WHERE seq = 2")
    finally:
        engine.dispose()
    assert main(["verify", "--database-url", url]) == 1
    assert "broken at entry 2" in capsys.readouterr().err
    assert main(["seal", "--database-url", url, "--writer", "svc"]) == 2  # PostgreSQL only


def test_a_row_inserted_then_changed_in_one_transaction_shows_as_inserted(factory, engine):
    with factory() as session:
        audit.attach(session, context())
        contact = Contact(contact_id="C1", email="first@example.cn")
        session.add(contact)
        session.flush()
        contact.email = "second@example.cn"
        session.flush()
        other = Contact(contact_id="C2", email="x@example.cn")
        session.add(other)
        session.commit()
        other.email = "y@example.cn"
        session.flush()
        other.email = "z@example.cn"
        session.commit()
    first, second = entries(engine)
    assert first["before"] == {"unit_contact/C1": None, "unit_contact/C2": None}
    assert first["after"]["unit_contact/C1"]["email"] == "second@example.cn"
    assert second["before"] == {"unit_contact/C2": {"email": "x@example.cn"}}
    assert second["after"] == {"unit_contact/C2": {"email": "z@example.cn"}}


# --- anchors: the head signed into a file outside the database ---

ANCHOR_KEY = b"0123456789abcdef0123456789abcdef"


def rewrite_from(engine, seq: int, **changes) -> None:
    """Edit entry `seq` and recompute every hash from there on: a chain valid in itself."""
    rows = entries(engine)
    prev = rows[seq - 2]["hash"] if seq > 1 else audit.GENESIS
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_log_no_update"))
        for row in rows[seq - 1:]:
            row = {**row, **(changes if row["seq"] == seq else {}), "prev_hash": prev}
            row["hash"] = prev = audit.entry_hash(row)
            conn.execute(audit.audit_log.update().where(audit.audit_log.c.seq == row["seq"]).values(**row))


def anchored(engine, path) -> audit.Verification:
    with engine.connect() as conn:
        return audit.verify_anchored(conn, path, ANCHOR_KEY)


def test_a_rewritten_chain_is_found_by_its_anchor(engine, tmp_path):
    path = tmp_path / "anchors.jsonl"
    with engine.begin() as conn:
        append_plain(conn, 3)
    with engine.connect() as conn:
        assert audit.write_anchor(path, ANCHOR_KEY, "inspection", conn)["seq"] == 3
    with engine.begin() as conn:
        append_plain(conn, 2)
    rewrite_from(engine, 2, actor_name="别人")
    with engine.connect() as conn:
        assert audit.verify(conn).ok  # valid in itself: only the anchor tells
    result = anchored(engine, path)
    assert not result.ok and result.broken_seq == 3 and result.anchors == 1, result
    assert "被改写" in result.reason and "rewritten" in result.reason and "第 1–3 条" in result.reason


def test_a_cut_tail_is_found_by_its_anchor(engine, tmp_path):
    path = tmp_path / "anchors.jsonl"
    with engine.begin() as conn:
        append_plain(conn, 5)
    with engine.connect() as conn:
        audit.write_anchor(path, ANCHOR_KEY, "inspection", conn)
    assert anchored(engine, path).ok and anchored(engine, path).anchored_seq == 5
    tamper(engine, "DELETE FROM audit_log WHERE seq >= 4")
    with engine.connect() as conn:
        assert audit.verify(conn).ok
    result = anchored(engine, path)
    assert not result.ok and result.broken_seq == 4 and result.head_seq == 3, result
    assert "截断" in result.reason and "第 5 条" in result.reason and "cut" in result.reason


def test_an_anchor_file_with_an_edited_or_foreign_line_is_refused(engine, tmp_path):
    path = tmp_path / "anchors.jsonl"
    with engine.begin() as conn:
        append_plain(conn, 2)
    with engine.connect() as conn:
        anchor = audit.write_anchor(path, ANCHOR_KEY, "inspection", conn)
        # the same head is not anchored twice; another service's anchors are its own
        assert audit.write_anchor(path, ANCHOR_KEY, "inspection", conn) is None
        assert audit.write_anchor(path, ANCHOR_KEY, "scoring", conn)["seq"] == 2
    assert len(path.read_text().splitlines()) == 2
    assert len(audit.read_anchors(path, ANCHOR_KEY, "inspection")) == 1
    path.write_text(path.read_text() + audit.canonical_json({**anchor, "seq": 9}) + "\n")
    result = anchored(engine, path)
    assert not result.ok and "第 3 行的签名不对" in result.reason
    with engine.connect() as conn:
        assert not audit.verify_anchored(conn, tmp_path / "none.jsonl", ANCHOR_KEY).anchors
        assert audit.verify_anchored(conn, tmp_path / "none.jsonl", ANCHOR_KEY).ok
