"""The audit log: every write made through the HTTP API, append-only and chained by hash.

One table `audit_log` per database, created by plumbing's own migrations
(`audit_migrations/`, version table `alembic_version_audit`), so no service's migration
history changes. Each entry says who (the authenticated principal, or "anonymous"), with
which grants, on which node, when, what (method + route + path), the request id, the
request body (secrets masked) and the rows before and after. Entries are never updated or
deleted: a trigger refuses UPDATE, DELETE and TRUNCATE (PostgreSQL) or UPDATE and DELETE
(SQLite), and `python -m services.tools.audit seal` hands the table to an owner role the
service's database user is not, so that user cannot switch the trigger off either.

Every entry carries `prev_hash` (the hash of the entry before it) and `hash` = sha256 over
the canonical JSON of its own fields and `prev_hash`; `seq` counts 1, 2, 3, … without
holes (it is assigned under a lock, not by a sequence, so a rolled-back transaction leaves
no gap). An edited entry breaks its own hash, a removed one breaks the count and the next
entry's `prev_hash`. Removing the newest entries, or rewriting an entry and recomputing every
hash after it, leaves a chain that is valid in itself: hence the anchors.

Anchors: every service with a database signs its log's head (seq and hash, HMAC-SHA256 with
AUDIT_ANCHOR_KEY or the file AUDIT_ANCHOR_KEY_FILE, by default var/audit-anchor.key made 0600
at first use) every AUDIT_ANCHOR_INTERVAL seconds and appends it as one JSON line to
AUDIT_ANCHOR_FILE (default var/audit-anchors.jsonl), a file the operator keeps outside the
database. `verify` with the anchors finds an entry whose hash differs from an anchored one (a
rewritten chain) and an anchored entry that is gone (a cut tail).

Capture is automatic (see `services.plumbing.db`): an HTTP entrypoint with an unsafe method
(or an RPC call) gets an `AuditContext` on its session; every commit of that session appends
one entry in the same transaction, so a write and its entry commit or roll back together
(an HTTP write that commits nothing still gets one entry, just after it). Event consumers
and timers get no context: what they write follows from facts already on record. The rows an
ORM flush inserted, updated or deleted are recorded as before/after; a use case can say
better what it changed with `describe(session, node=..., target=..., before=..., after=...)`.
(No nameko imports: the tools use this module too.)
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

from sqlalchemy import (JSON, BigInteger, Column, Index, Integer, MetaData, String, Table, Text, and_, event, false,
                        inspect as sa_inspect, insert, or_, select)

from services.plumbing.keyfiles import SecretUnavailable, operator_secret, secret_file_path
from services.plumbing.sql import UtcDateTime, advisory_xact_lock

MIGRATIONS = Path(__file__).parent / "audit_migrations"
VERSION_TABLE = "alembic_version_audit"
GENESIS = "0" * 64
ANONYMOUS = "anonymous"
_LOCK_KEY = "chuangwei.audit_log"
# Long texts (bulletin data, exports) are kept as a prefix and a digest: enough to tell what
# changed and to check a copy, without one write filling the log.
MAX_TEXT = 2000
MAX_ROWS = 200
_SECRET_KEYS = {"password", "secret", "token", "refresh_token", "access_token", "api_key", "apikey",
                "authorization", "cookie", "private_key", "private_pem", "signing_key", "client_secret",
                "response_code"}  # response_code: a survey respondent's one-time answer code
_SECRET_PARTS = ("password", "secret", "passwd")
# Bot webhooks carry their credential in the query (企业微信 ?key=, 钉钉 ?access_token=&sign=).
_URL_SECRET_PARAMS = {"key", "sign", "signature", "sig"}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+$")
MASK = "***"

metadata = MetaData()

audit_log = Table(
    "audit_log", metadata,
    # Assigned as last seq + 1 under the append lock (not a sequence): no holes.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("service", String(64), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("actor_subject", String(200), nullable=False),
    Column("actor_name", String(200), nullable=False),
    Column("actor_kind", String(20), nullable=False),
    Column("roles", JSON, nullable=False),
    Column("node", String(12), nullable=True),
    Column("target", String(300), nullable=True),
    Column("action", String(300), nullable=False),
    Column("path", Text, nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("request", JSON, nullable=True),
    Column("before", JSON, nullable=True),
    Column("after", JSON, nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_at", "at"),
    Index("ix_audit_log_actor_subject", "actor_subject"),
    Index("ix_audit_log_request_id", "request_id"),
)

FIELDS = ("seq", "service", "at", "actor_subject", "actor_name", "actor_kind", "roles", "node", "target",
          "action", "path", "request_id", "request", "before", "after", "prev_hash")


# --- canonical values and the hash ---

def _plain(value: Any) -> Any:
    """A JSON value for anything a row or a body may hold (what is stored is what is hashed)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (date, UUID, Decimal)):
        return str(value)
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return f"<{len(data)} bytes sha256:{hashlib.sha256(data).hexdigest()}>"
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump(mode="json"))
    return str(value)


def is_secret(key: str) -> bool:
    lowered = key.lower()
    return lowered in _SECRET_KEYS or any(part in lowered for part in _SECRET_PARTS) \
        or lowered.endswith("_token")


def mask_url(text: str) -> str:
    """A URL without its credentials: the password of user:password@ and secret query values."""
    if not _URL.match(text):
        return text
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
        if parts.password:
            netloc = netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(is_secret(k) or k.lower() in _URL_SECRET_PARAMS for k, _ in pairs):
                query = urlencode([(k, MASK if is_secret(k) or k.lower() in _URL_SECRET_PARAMS else v)
                                   for k, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not a URL after all (e.g. a bad port): keep the text
        return text


def _clean_text(text: str) -> str:
    text = mask_url(text)
    return _shorten(text) if len(text) > MAX_TEXT else text


def sanitise(value: Any) -> Any:
    """JSON-safe, secrets masked (never stored, not even hashed), long texts shortened."""
    value = _plain(value)
    stack = [value]
    while stack:  # iterative: a deep body must not exhaust the stack here
        current = stack.pop()
        if isinstance(current, dict):
            for key in list(current):
                item = current[key]
                if is_secret(key) and item is not None:
                    current[key] = MASK
                elif isinstance(item, str):
                    current[key] = _clean_text(item)
                else:
                    stack.append(item)
        elif isinstance(current, list):
            for index, item in enumerate(current):
                if isinstance(item, str):
                    current[index] = _clean_text(item)
                else:
                    stack.append(item)
    return _clean_text(value) if isinstance(value, str) else value


def _shorten(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{text[:MAX_TEXT]}…[{len(text)} chars, sha256:{digest}]"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _instant(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="microseconds")


def entry_hash(entry: dict) -> str:
    """sha256 over the canonical JSON of the entry's fields, `prev_hash` included."""
    content = {name: entry.get(name) for name in FIELDS}
    content["at"] = _instant(entry["at"])
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()


# --- what a request tells the log ---

@dataclass
class Actor:
    subject: str = ANONYMOUS
    name: str = ANONYMOUS
    kind: str = ANONYMOUS
    grants: list = field(default_factory=list)

    @classmethod
    def of(cls, principal) -> "Actor":
        if principal is None:
            return cls()
        # An API token's call names the person who owns it, not only the token.
        name = principal.label if principal.kind != "user" and getattr(principal, "owner", None) else principal.name
        return cls(principal.subject, name, principal.kind,
                   [{"role": g.role, "node": g.node} for g in principal.grants])


@dataclass
class AuditContext:
    """One HTTP write request (or RPC call): attached to its session, an entry per commit."""
    service: str
    method: str
    route: str
    path: str
    request_id: str
    actor: Actor
    request: Any = None
    home: str | None = None
    always: bool = True  # an entry even when nothing was committed (a successful HTTP write)
    entries: int = 0
    rows: dict = field(default_factory=dict)
    description: dict = field(default_factory=dict)

    @property
    def action(self) -> str:
        return f"{self.method} {self.route}"


CONTEXT_KEY = "chuangwei.audit"
_UNSET = object()


def describe(session, *, node: str | None = None, target: str | None = None, before: Any = _UNSET,
             after: Any = _UNSET, also: dict | None = None) -> None:
    """What this transaction changed, in the service's words, for its audit entry: the node it
    acted on (else the stack's home node), the record (e.g. "veto:VT-1"), and before/after
    (else the rows the ORM flushed). A no-op outside an audited request (consumers, timers).

    The node decides which administrators may read the entry (those whose grant covers it),
    body and rows included: for what the subject side may not see yet (an unannounced
    inspection before its release), name the inspecting node, not the subject's. `also` adds
    facts the rows do not show to the after-image, beside the flushed rows (the proposer of an
    approved change, next to its approver)."""
    context: AuditContext | None = session.info.get(CONTEXT_KEY)
    if context is None:
        return
    if also:
        context.description.setdefault("also", {}).update(also)
    if node is not None:
        context.description["node"] = node
    if target is not None:
        context.description["target"] = target
    if before is not _UNSET:
        context.description["before"] = before
    if after is not _UNSET:
        context.description["after"] = after


def attach(session, context: AuditContext) -> None:
    session.info[CONTEXT_KEY] = context


# --- capture: ORM flushes and commits ---

def _row_key(state) -> str:
    mapper = state.mapper
    values = []
    for column in mapper.primary_key:
        prop = mapper.get_property_by_column(column)
        values.append(str(state.dict.get(prop.key)))
    return f"{mapper.local_table.name}/{'/'.join(values)}"


def _loaded_columns(state) -> dict:
    return {attr.key: state.dict[attr.key] for attr in state.mapper.column_attrs if attr.key in state.dict}


def _after_flush(session, _flush_context) -> None:
    context: AuditContext | None = session.info.get(CONTEXT_KEY)
    if context is None:
        return
    rows = context.rows
    # After the flush the new rows have their keys, and the attribute histories still hold
    # the values before it.
    for obj in session.new:
        state = sa_inspect(obj)
        rows[_row_key(state)] = (None, _loaded_columns(state))
    for obj in session.dirty:
        state = sa_inspect(obj)
        old, new = {}, {}
        for attr in state.mapper.column_attrs:
            history = state.attrs[attr.key].history
            if history.added or history.deleted:
                old[attr.key] = history.deleted[0] if history.deleted else None
                new[attr.key] = history.added[0] if history.added else None
        if new:
            key = _row_key(state)
            earlier = rows.get(key)
            if earlier is not None:  # changed twice in one transaction: first before, last after
                old = None if earlier[0] is None and earlier[1] is not None else {**old, **(earlier[0] or {})}
                new = {**(earlier[1] or {}), **new}
            rows[key] = (old, new)
    for obj in session.deleted:
        state = sa_inspect(obj)
        rows[_row_key(state)] = (_loaded_columns(state), None)


def _before_commit(session) -> None:
    context: AuditContext | None = session.info.get(CONTEXT_KEY)
    if context is None or session.in_nested_transaction():
        return
    session.flush()  # the last changes reach `context.rows` before the entry is made
    append_for(session, context)


def install(session_factory) -> None:
    """Audit the commits of this factory's sessions that carry an AuditContext."""
    event.listen(session_factory, "after_flush", _after_flush)
    event.listen(session_factory, "before_commit", _before_commit)


def _changes(rows: dict) -> tuple[Any, Any]:
    if not rows:
        return None, None
    keys = list(rows)[:MAX_ROWS]
    before = {key: rows[key][0] for key in keys}
    after = {key: rows[key][1] for key in keys}
    if len(rows) > MAX_ROWS:
        after["…"] = f"{len(rows) - MAX_ROWS} more rows not listed"
    return before, after


def append_for(session, context: AuditContext, at: datetime | None = None) -> dict:
    """Append the entry for what this transaction of `context`'s request did."""
    described = context.description
    auto_before, auto_after = _changes(context.rows)
    after = described.get("after", auto_after)
    if described.get("also"):
        after = {**(after if isinstance(after, dict) else {} if after is None else {"after": after}),
                 **described["also"]}
    entry = append(
        session,
        service=context.service, at=at,
        actor_subject=context.actor.subject, actor_name=context.actor.name, actor_kind=context.actor.kind,
        roles=context.actor.grants, node=described.get("node") or context.home,
        target=described.get("target"), action=context.action, path=context.path,
        request_id=context.request_id, request=context.request,
        before=described.get("before", auto_before), after=after)
    context.entries += 1
    context.rows = {}
    context.description = {}
    return entry


def append(session, *, service: str, actor_subject: str, actor_name: str, actor_kind: str, roles: list,
           node: str | None, action: str, path: str, request_id: str, target: str | None = None,
           request: Any = None, before: Any = None, after: Any = None, at: datetime | None = None) -> dict:
    """Append one entry after the newest, in the caller's transaction (`session`: a Session or
    a Connection). Appends are serialised so the chain stays one line with concurrent writers."""
    advisory_xact_lock(session, _LOCK_KEY)
    last = session.execute(select(audit_log.c.seq, audit_log.c.hash)
                           .order_by(audit_log.c.seq.desc()).limit(1)).first()
    # Round-tripped through canonical JSON: what the database hands back is what was hashed.
    entry = {
        "seq": (last.seq + 1) if last else 1,
        "service": service,
        "at": (at or datetime.now(timezone.utc)).astimezone(timezone.utc),
        "actor_subject": actor_subject[:200], "actor_name": actor_name[:200], "actor_kind": actor_kind[:20],
        "roles": json.loads(canonical_json(sanitise(roles or []))),
        "node": node, "target": target[:300] if target else None,
        "action": action[:300], "path": path, "request_id": request_id[:64],
        "request": json.loads(canonical_json(sanitise(request))),
        "before": json.loads(canonical_json(sanitise(before))),
        "after": json.loads(canonical_json(sanitise(after))),
        "prev_hash": last.hash if last else GENESIS,
    }
    entry["hash"] = entry_hash(entry)
    session.execute(insert(audit_log).values(**entry))
    return entry


# --- checking the chain ---

@dataclass
class Verification:
    ok: bool
    entries: int
    head_seq: int | None = None
    head_hash: str | None = None
    broken_seq: int | None = None
    reason: str | None = None
    anchors: int = 0                  # anchors checked against the chain
    anchored_seq: int | None = None   # the newest anchored entry


def verify_entries(entries: Iterable[dict], anchors: Iterable[dict] = ()) -> Verification:
    """Walk entries in seq order: counts from 1 without holes, each links to the one before,
    each hash matches its content, and each anchored entry (`anchors`: signature already
    checked) is present with the anchored hash."""
    anchored: dict[int, list[dict]] = {}
    for anchor in anchors:
        anchored.setdefault(int(anchor["seq"]), []).append(anchor)
    newest = max(anchored, default=None)
    checked = sum(len(a) for a in anchored.values())

    def broken(count, head, seq, reason):
        return Verification(False, count, *(head or (None, None)), broken_seq=seq, reason=reason,
                            anchors=checked, anchored_seq=newest)

    expected_seq, prev_hash, count, head, last_good_anchor = 1, GENESIS, 0, None, 0
    for entry in entries:
        seq = entry["seq"]
        if seq != expected_seq:
            return broken(count, head, expected_seq,
                          f"第 {expected_seq} 条记录缺失（下一条是第 {seq} 条）; "
                          f"entry {expected_seq} is missing (next present: {seq})")
        if entry["prev_hash"] != prev_hash:
            return broken(count, head, seq, f"第 {seq} 条记录没有接在第 {seq - 1} 条之后; "
                                            f"entry {seq} does not link to entry {seq - 1}")
        if entry_hash(entry) != entry["hash"]:
            return broken(count, head, seq, f"第 {seq} 条记录被改动：内容与其哈希不符; "
                                            f"entry {seq} was altered: its content does not match its hash")
        for anchor in anchored.get(seq, ()):
            if anchor["hash"] != entry["hash"]:
                return broken(count, head, seq,
                              f"审计日志被改写：第 {seq} 条的哈希与 {anchor['at']} 签名的锚不符，第 "
                              f"{last_good_anchor + 1}–{seq} 条中有记录被改动后重算了哈希; the log was rewritten: "
                              f"entry {seq}'s hash differs from the anchor signed at {anchor['at']}, so an entry "
                              f"between {last_good_anchor + 1} and {seq} was changed and the chain recomputed")
        if seq in anchored:
            last_good_anchor = seq
        count += 1
        head = (seq, entry["hash"])
        prev_hash = entry["hash"]
        expected_seq = seq + 1
    if newest is not None and (head is None or head[0] < newest):
        at = max(anchored[newest], key=lambda a: a["at"])["at"]
        last = head[0] if head else 0
        return broken(count, head, last + 1,
                      f"审计日志被截断：{at} 签名的锚记录到第 {newest} 条，现在日志只到第 {last} 条，第 "
                      f"{last + 1}–{newest} 条已被删除; the log was cut: the anchor signed at {at} records entry "
                      f"{newest}, the log now ends at entry {last}: entries {last + 1} to {newest} were removed")
    return Verification(True, count, *(head or (None, None)), anchors=checked, anchored_seq=newest)


def stored_entries(bind, batch: int = 1000) -> Iterator[dict]:
    """Every entry in seq order, a batch at a time (`bind`: Session or Connection)."""
    after = 0
    while True:
        rows = bind.execute(select(audit_log).where(audit_log.c.seq > after)
                            .order_by(audit_log.c.seq).limit(batch)).mappings().all()
        if not rows:
            return
        for row in rows:
            yield dict(row)
        after = rows[-1]["seq"]


def verify(bind, anchors: Iterable[dict] = ()) -> Verification:
    return verify_entries(stored_entries(bind), anchors)


# --- anchors: the head, signed, in a file outside the database ---

DEFAULT_ANCHOR_FILE = "var/audit-anchors.jsonl"
DEFAULT_ANCHOR_KEY_FILE = "var/audit-anchor.key"
ANCHOR_FIELDS = ("service", "seq", "hash", "at")
_SIGNATURE_PREFIX = "hmac-sha256:"


class AnchorFileError(ValueError):
    """The anchor file cannot be trusted as it stands: a line unreadable or wrongly signed."""


def anchor_file(config: dict | None = None, base: Path | None = None) -> Path:
    """AUDIT_ANCHOR_FILE from the config or the environment, else var/audit-anchors.jsonl."""
    return secret_file_path(config, "AUDIT_ANCHOR_FILE", DEFAULT_ANCHOR_FILE, base)


def anchor_key(config: dict | None = None, base: Path | None = None, create: bool = True) -> bytes:
    """The anchors' HMAC key: AUDIT_ANCHOR_KEY, else the file AUDIT_ANCHOR_KEY_FILE, else
    var/audit-anchor.key (made, 0600, when `create`)."""
    return operator_secret(config, "AUDIT_ANCHOR_KEY", "AUDIT_ANCHOR_KEY_FILE", DEFAULT_ANCHOR_KEY_FILE,
                           (lambda: secrets.token_hex(32).encode("ascii")) if create else None, base)


def _signature(key: bytes, anchor: dict) -> str:
    content = canonical_json({name: anchor[name] for name in ANCHOR_FIELDS})
    return _SIGNATURE_PREFIX + hmac.new(key, content.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_anchor(key: bytes, *, service: str, seq: int, hash: str, at: datetime) -> dict:
    anchor = {"service": service, "seq": int(seq), "hash": hash, "at": _instant(at)}
    anchor["signature"] = _signature(key, anchor)
    return anchor


def head(bind) -> tuple[int, str] | None:
    row = bind.execute(select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)).first()
    return (row.seq, row.hash) if row else None


def _last_anchor_of(fh, service: str, tail: int = 65536) -> dict | None:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - tail))
    for line in reversed(fh.read().decode("utf-8", "replace").splitlines()):
        try:
            anchor = json.loads(line)
        except ValueError:
            continue
        if isinstance(anchor, dict) and anchor.get("service") == service:
            return anchor
    return None


def write_anchor(path: Path, key: bytes, service: str, bind, now: datetime | None = None) -> dict | None:
    """Append the signed head of `bind`'s log to the anchor file; None if the log is empty or
    this head is already the service's last anchor. Safe to run in every instance at once
    (an exclusive lock on the file; the same head is not written twice in a row)."""
    current = head(bind)
    if current is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    with os.fdopen(fd, "r+b") as fh:
        # Without blocking: services sharing a process share one OS thread under eventlet, so
        # a blocking lock held by another green thread of the same process would never be let go.
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.02)
        try:
            last = _last_anchor_of(fh, service)
            if last is not None and last.get("seq") == current[0] and last.get("hash") == current[1]:
                return None
            anchor = sign_anchor(key, service=service, seq=current[0], hash=current[1],
                                 at=now or datetime.now(timezone.utc))
            fh.write((canonical_json(anchor) + "\n").encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
            return anchor
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_anchors(path: Path, key: bytes | None, service: str | None = None) -> list[dict]:
    """The anchors in the file (of `service`, if given), each signature checked; [] if there is
    no file. Raises AnchorFileError at a line that is not an anchor or not signed with `key`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    anchors = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            anchor = json.loads(line)
            ok = isinstance(anchor, dict) and all(name in anchor for name in (*ANCHOR_FIELDS, "signature")) \
                and isinstance(anchor["seq"], int)
        except ValueError:
            ok = False
        if not ok:
            raise AnchorFileError(f"锚文件 {path} 第 {number} 行不是一条锚; line {number} of {path} is not an anchor")
        if service is not None and anchor["service"] != service:
            continue
        if key is None:
            raise AnchorFileError("有锚但没有核验签名的密钥（AUDIT_ANCHOR_KEY / AUDIT_ANCHOR_KEY_FILE）; "
                                  "there are anchors but no key to check their signatures")
        if not hmac.compare_digest(str(anchor["signature"]), _signature(key, anchor)):
            raise AnchorFileError(f"锚文件 {path} 第 {number} 行的签名不对：被改动过，或不是用这把密钥签的; "
                                  f"line {number} of {path} has a wrong signature: edited, or signed with another key")
        anchors.append(anchor)
    return anchors


def verify_anchored(bind, path: Path, key: bytes | None, service: str | None = None) -> Verification:
    """The chain checked in itself and against the anchors in `path` (a bad anchor file is a
    failed verification, said so)."""
    try:
        anchors = read_anchors(path, key, service)
    except AnchorFileError as exc:
        result = verify(bind)
        result.ok, result.reason = False, str(exc)
        return result
    return verify(bind, anchors)


# --- reading ---

def subtree_filter(nodes: list[str]):
    """SQL for "node lies within one of `nodes`" (as `services.contracts.nodes.is_within`)."""
    from services.contracts.nodes import subtree_prefix
    clauses = [audit_log.c.node.startswith(subtree_prefix(node), autoescape=True) for node in nodes]
    return or_(*clauses) if clauses else false()


def query(bind, *, nodes: list[str] | None = None, since: datetime | None = None,
          until: datetime | None = None, actor: str | None = None, action: str | None = None,
          request_id: str | None = None, service: str | None = None, limit: int = 100,
          offset: int = 0) -> list[dict]:
    """Entries newest first. `nodes`: only entries on those subtrees (and stack-wide ones
    without a node); `actor` matches the subject or the name; `action` an exact action
    ("POST /vetoes/<veto_id>/revoke") or a method ("POST")."""
    conditions = []
    if nodes is not None:
        conditions.append(or_(subtree_filter(nodes), audit_log.c.node.is_(None)))
    if since is not None:
        conditions.append(audit_log.c.at >= since)
    if until is not None:
        conditions.append(audit_log.c.at < until)
    if actor:
        conditions.append(or_(audit_log.c.actor_subject == actor, audit_log.c.actor_name == actor))
    if action:
        conditions.append(or_(audit_log.c.action == action, audit_log.c.action.startswith(action + " ",
                                                                                            autoescape=True)))
    if request_id:
        conditions.append(audit_log.c.request_id == request_id)
    if service:
        conditions.append(audit_log.c.service == service)
    statement = select(audit_log).order_by(audit_log.c.seq.desc())
    if conditions:
        statement = statement.where(and_(*conditions))
    return [dict(row) for row in bind.execute(statement.limit(limit).offset(offset)).mappings()]
