"""Hostile input against the running notify service (real broker, PostgreSQL, loopback servers):
every payload gets a 4xx naming the field and stores nothing; what a hostile value reaches
(e-mail headers, bot Markdown, a template that breaks at delivery, a webhook aimed inside) is
neutralised."""
from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import uuid
from datetime import datetime, timezone

import pytest
from sqlalchemy import create_engine, text

from services.contracts.events import make_event
from services.contracts.events.tasks import TaskOverdue
from services.contracts.periods import CST
from services.notify.service import NotifyService
from tests import support
from tests.integration.test_notify_service import (COMMUNITY, STREET, TASKS, LoopbackServer, inbox_items, publish,
                                                   task_ref)

pytestmark = pytest.mark.integration

LOOPS = "{% for i in range(10000) %}{% for j in range(10000) %}{{ i }}{% endfor %}{% endfor %}"


@pytest.fixture
def servers(tmp_path):
    smtp = LoopbackServer("smtp", tmp_path / "mail.jsonl")
    http = LoopbackServer("http", tmp_path / "bot.jsonl")
    yield {"smtp": smtp, "http": http}
    smtp.close()
    http.close()


@pytest.fixture
def start(amqp_uri, database_url, servers, vhost, rabbit_admin):
    stacks = contextlib.ExitStack()

    def start_stack(**overrides):
        port = support.free_port()
        config = support.base_config(
            amqp_uri, database_url, WEB_ADDRESSES={"notify": f"127.0.0.1:{port}"}, SMTP_HOST="127.0.0.1",
            SMTP_PORT=servers["smtp"].port, SMTP_FROM="cwb@jns.example.cn", NOTIFY_POLL_INTERVAL=0.1,
            NOTIFY_MAX_ATTEMPTS=1, NOTIFY_SEND_TIMEOUT=5, WEBHOOK_TIMEOUT=3, NOTIFY_BULLETIN_SCHEDULE="false")
        config.update(overrides)
        stacks.enter_context(support.running_services(config, NotifyService))
        queue = "evt-tasks-task_overdue--notify.on_task_overdue"
        support.wait_until(lambda: rabbit_admin.queue(vhost, queue), message=f"queue {queue}")
        return {"api": support.ApiClient(f"http://127.0.0.1:{port}"), "amqp_uri": amqp_uri,
                "database_url": database_url, **servers}
    yield start_stack
    stacks.close()


def counts(database_url: str) -> dict:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in (
                "notify_contacts", "notify_template_overrides", "notify_rule_sets", "notify_bulletins",
                "notify_notifications")}
    finally:
        engine.dispose()


def execute(database_url: str, sql: str, **params) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


CONTACT = {"owner_kind": "subject", "owner_id": "subj-zjs", "node": COMMUNITY, "name": "周家山社区 张主任",
           "inbox_user": "zhang"}
HUGE = 2 ** 63

# (name, method, path, body or query params, expected status, field named in the error)
HOSTILE = [
    ("template: nested loops of 10,000", "PUT", f"/templates/{STREET}/urge.md", {"source": LOOPS}, 422, "source"),
    ("template: nested loops of 100,000", "PUT", f"/templates/{STREET}/urge.md",
     {"source": LOOPS.replace("10000", "100000")}, 422, "source"),
    ("template: escapes the sandbox", "PUT", f"/templates/{STREET}/urge.md",
     {"source": "{{ task.__class__.__mro__[1].__subclasses__() }}"}, 422, "source"),
    ("template: fails its test render", "PUT", f"/templates/{STREET}/urge.md",
     {"source": "{{ event.no_such_thing.at_all }}"}, 422, "source"),
    ("template: string bomb", "PUT", f"/templates/{STREET}/bulletin.md",
     {"source": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"},
     422, "source"),
    ("template: source too long", "PUT", f"/templates/{STREET}/urge.md", {"source": "x" * 60_000}, 422, "source"),
    ("webhook: loopback", "POST", "/contacts", {**CONTACT, "webhook_url": "https://127.0.0.1:8443/hook"}, 422,
     "webhook_url"),
    ("webhook: 10.x", "POST", "/contacts", {**CONTACT, "webhook_url": "https://10.0.0.8/hook"}, 422, "webhook_url"),
    ("webhook: metadata service", "POST", "/contacts",
     {**CONTACT, "webhook_url": "https://169.254.169.254/latest/meta-data/"}, 422, "webhook_url"),
    ("webhook: http://", "POST", "/contacts",
     {**CONTACT, "webhook_url": "http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=1"}, 422, "webhook_url"),
    ("webhook: host not on the allowlist", "POST", "/contacts",
     {**CONTACT, "webhook_url": "https://evil.example.cn/hook"}, 422, "webhook_url"),
    ("webhook: longer than storable", "POST", "/contacts",
     {**CONTACT, "webhook_url": "https://qyapi.weixin.qq.com/" + "a" * 1100}, 422, "webhook_url"),
    ("name with CR/LF", "POST", "/contacts", {**CONTACT, "name": "张主任\r\nBcc: victim@example.cn"}, 422, "name"),
    ("inbox user with LF", "POST", "/contacts", {**CONTACT, "inbox_user": "zhang\nadmin"}, 422, "inbox_user"),
    ("e-mail with a header", "POST", "/contacts", {**CONTACT, "email": "a@b.cn\r\nBcc: victim@example.cn"}, 422,
     "email"),
    ("e-mail with a second recipient", "POST", "/contacts", {**CONTACT, "email": "x,victim@example.cn"}, 422,
     "email"),
    ("rule condition of the wrong type", "PUT", f"/rules/{STREET}", {"document": {"rules": [
        {"id": "u", "event": "task_overdue", "notice": "urge", "to": ["responsible"], "channels": ["inbox"],
         "when": {"urge_count_at_least": "many"}}]}}, 422, "rules.0.when"),
    ("rules with an author field", "PUT", f"/rules/{STREET}", {"author": "冒名者", "document": {"rules": []}}, 422,
     "author"),
    ("bulletin in 9999", "POST", "/bulletins", {"period": "9999-12"}, 422, "period"),
    ("bulletin in 0001", "POST", "/bulletins", {"period": "0001-01"}, 422, "period"),
    ("bulletin month 13", "POST", "/bulletins", {"period": "2026-13"}, 422, "period"),
    ("bulletin with requested_by", "POST", "/bulletins", {"period": "2026-10", "requested_by": "冒名者"}, 422,
     "requested_by"),
    ("newsletter title with CR/LF", "POST", "/newsletters", {"title": "简报\r\n伪造", "content": "正文"}, 422, "title"),
    ("newsletter period 9999", "POST", "/newsletters", {"title": "简报", "content": "正文", "period": "9999-01"}, 422,
     "period"),
    ("bulletin list period 9999", "GET", "/bulletins", {"period": "9999-12"}, 422, "query.period"),
    ("bulletin list offset 2^63", "GET", "/bulletins", {"offset": str(HUGE)}, 422, "query.offset"),
    ("notification offset 2^63", "GET", "/notifications", {"offset": str(HUGE)}, 422, "query.offset"),
    ("notification node malformed", "GET", "/notifications", {"node": "41150200800X"}, 422, "query.node"),
    ("contact list offset 2^63", "GET", "/contacts", {"offset": str(HUGE)}, 422, "query.offset"),
    ("inbox offset 2^63", "GET", "/inbox", {"offset": str(HUGE)}, 422, "query.offset"),
    ("dead letters offset 2^63", "GET", "/dead-letters", {"offset": str(HUGE)}, 422, "query.offset"),
]


def test_hostile_payloads_get_a_4xx_naming_the_field_and_store_nothing(start):
    stack = start(NOTIFY_WEBHOOK_HOSTS=["qyapi.weixin.qq.com", "oapi.dingtalk.com", "127.0.0.1", "10.0.0.8",
                                        "169.254.169.254"])  # allowlisted, yet private: still refused
    api, db = stack["api"], stack["database_url"]
    first = api.post("/contacts", CONTACT)
    assert first.status_code == 201, first.text
    second = api.post("/contacts", {**CONTACT, "name": "周家山社区 李干事", "inbox_user": "li"})
    assert second.status_code == 201, second.text
    before = counts(db)
    failures = []
    for name, method, path, payload, status, field in HOSTILE:
        if method == "GET":
            response = api.get(path, params=payload)
        else:
            response = api.request(method, path, json_body=payload)
        fields = [e.get("field") for e in response.json().get("errors", [])] if response.content else []
        if response.status_code != status or not any(f == field or (f or "").startswith(field) for f in fields):
            failures.append(f"{name}: {response.status_code} {response.text[:300]}")
    # Renaming a contact to a name its owner already uses: a conflict, not a crash.
    clash = api.put(f"/contacts/{second.json()['contact_id']}", {**CONTACT, "inbox_user": "li"})
    if clash.status_code != 409 or clash.json()["errors"][0]["field"] != "name":
        failures.append(f"rename clash: {clash.status_code} {clash.text[:300]}")
    assert failures == []
    assert counts(db) == before  # nothing stored by any of them
    assert api.get(f"/templates/{STREET}/urge.md").json()["origin"] == "default"
    [stored] = [c for c in api.get("/contacts").json() if c["contact_id"] == second.json()["contact_id"]]
    assert stored["name"] == "周家山社区 李干事"


def test_a_webhook_aimed_inside_is_refused_at_delivery_too(start):
    """A contact stored before the rules (or whose host now resolves inside) is still not called."""
    stack = start(NOTIFY_WEBHOOK_HOSTS=["127.0.0.1"], NOTIFY_WEBHOOK_ALLOW_HTTP=True)
    api, db, http = stack["api"], stack["database_url"], stack["http"]
    now = datetime.now(timezone.utc)
    execute(db, "INSERT INTO notify_contacts (id, owner_kind, owner_id, node, name, webhook_url, webhook_format, "
                "active, created_at, updated_at) VALUES (:id, 'subject', 'subj-zjs', :node, '旧联系人', :url, "
                "'wecom', true, :now, :now)",
            id=str(uuid.uuid4()), node=COMMUNITY, url=f"http://127.0.0.1:{http.port}/ok/inside", now=now)
    publish(stack["amqp_uri"], "tasks", make_event(TaskOverdue(
        task=task_ref("task-ssrf", "subj-zjs", "周家山社区"), overdue_since=now, urge_count=1), TASKS))
    [dead] = support.wait_until(lambda: api.get("/dead-letters").json(), message="the refused delivery")
    assert "webhook refused" in dead["last_error"] and "loopback" in dead["last_error"]
    assert dead["attempts"] == 1  # its one attempt is over, and the server records a call before it answers
    assert http.records() == []  # the loopback server was never called


def test_hostile_names_reach_mail_headers_and_bot_markdown_neutralised_and_a_broken_template_falls_back(start):
    stack = start(NOTIFY_WEBHOOK_HOSTS=["127.0.0.1"], NOTIFY_WEBHOOK_ALLOW_HTTP=True,
                  NOTIFY_WEBHOOK_ALLOW_PRIVATE=True)
    api, db, smtp, http = stack["api"], stack["database_url"], stack["smtp"], stack["http"]
    contact = api.post("/contacts", {**CONTACT, "email": "zjs@community.example.cn",
                                     "webhook_url": f"http://127.0.0.1:{http.port}/ok/zjs"})
    assert contact.status_code == 201, contact.text
    # A stored template that breaks on a real event (put there behind the API's back, as an old
    # version would be): the notice still goes out, with the default template, and says why.
    execute(db, "INSERT INTO notify_template_overrides (node, name, source, author, updated_at) "
                "VALUES (:node, 'urge.md', :source, 'old', :now)",
            node=STREET, source="{{ event.removed_field.name }}", now=datetime.now(timezone.utc))
    hostile = "周家山社区\r\nBcc: victim@example.cn\n# 假通知 [点我](http://evil.example) **加急** |x|"
    publish(stack["amqp_uri"], "tasks", make_event(TaskOverdue(
        task=task_ref("task-h", "subj-zjs", hostile), overdue_since=datetime(2026, 11, 10, 18, tzinfo=CST),
        urge_count=1), TASKS))

    [mail] = support.wait_until(lambda: smtp.records(), message="the e-mail")
    [call] = support.wait_until(lambda: http.records(), message="the bot call")
    message = email.message_from_bytes(base64.b64decode(mail["data"]), policy=email.policy.default)
    assert mail["to"] == ["zjs@community.example.cn"] and message["Bcc"] is None
    assert message["Subject"].startswith("督办单（第1次）：周家山社区 Bcc: victim@example.cn")
    content = call["body"]["markdown"]["content"]
    assert "\n# 假通知" not in content and "[点我](" not in content and "**加急**" not in content
    assert "＃ 假通知 ［点我］(http://evil.example) ＊＊加急＊＊ ｜x｜" in content
    [notice] = inbox_items(api, "zhang")
    assert notice["title"].startswith("督办单（第1次）") and "\n" not in notice["title"]
    [listed] = api.get("/notifications", params={"channel": "inbox"}).json()
    assert "removed_field" in listed["render_problem"]
    assert 'chuangwei_notify_template_fallbacks_total{notice="urge"}' in api.get("/metrics").text
