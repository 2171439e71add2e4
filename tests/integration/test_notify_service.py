"""The notification service through the real broker, PostgreSQL, a real SMTP server and a
real HTTP server (both on loopback, in subprocesses: aiosmtpd runs its own asyncio loop,
which does not start under eventlet's monkey patching)."""
from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import io
import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from kombu import Connection, Exchange, Producer as KombuProducer
from sqlalchemy import create_engine, func, select

from services.contracts.events import Producer, make_event
from services.contracts.events.inspection import PlaceRef
from services.contracts.events.scoring import PolicyRef, ScoredSubject, ScorePublished
from services.contracts.events.tasks import (CoordinationRequested, Responsible, TaskOpened, TaskOverdue, TaskRef,
                                             TaskRelapsed)
from services.contracts.periods import CST, Period, PeriodKind
from services.notify.models import Notification, ScoreRow, TaskRow
from services.notify.service import NotifyService
from tests import support

pytestmark = pytest.mark.integration

STREET = "411502008000"      # 金牛山街道 (this stack)
COMMUNITY = "411502008001"   # 周家山社区

SERVERS = r'''
import base64, json, sys, threading
kind, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()
def record(entry):
    with lock, open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")
if kind == "blackhole":  # accepts connections and never says a word, until told "hang up" on stdin
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen(50)
    held, hung_up = [], threading.Event()
    def accept():
        while True:
            conn, _ = listener.accept()
            with lock:
                if hung_up.is_set():
                    conn.close()
                    continue
                held.append(conn)
            record({"connected": len(held)})
    threading.Thread(target=accept, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "hang up":  # from now on every connection is closed before a greeting
            with lock:
                hung_up.set()
                for conn in held:
                    conn.close()
elif kind == "smtp":
    from aiosmtpd.controller import Controller
    class Handler:
        async def handle_DATA(self, server, session, envelope):
            record({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                    "data": base64.b64encode(envelope.original_content or envelope.content).decode()})
            return "250 OK"
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    sys.stdin.read()
    controller.stop()
else:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    counts = {}
    gate = threading.Event()  # "/held/" calls wait for "open" on stdin
    class Bot(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                n = counts[self.path] = counts.get(self.path, 0) + 1
            fail = self.path.startswith("/fail3/") and n <= 3
            if self.path.startswith("/held/"):
                record({"path": self.path, "n": n, "arrived": True})
                gate.wait()
            record({"path": self.path, "n": n, "status": 500 if fail else 200, "body": json.loads(body)})
            self.send_response(500 if fail else 200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"errcode": -1, "errmsg": "busy"}' if fail else b'{"errcode": 0, "errmsg": "ok"}')
        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", port), Bot)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "open":
            gate.set()
    gate.set()
    server.shutdown()
'''


class LoopbackServer:
    def __init__(self, kind: str, log_path):
        self.port = support.free_port()
        self.log_path = log_path
        log_path.write_text("", encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVERS, kind, str(self.port), str(log_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def records(self) -> list[dict]:
        """What the server answered (HTTP calls, e-mails); arrivals still waiting are left out."""
        return [r for r in self.log() if "arrived" not in r]

    def log(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text(encoding="utf-8").splitlines() if line]

    def tell(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture
def loopback(tmp_path):
    smtp = LoopbackServer("smtp", tmp_path / "mail.jsonl")
    http = LoopbackServer("http", tmp_path / "bot.jsonl")
    yield {"smtp": smtp, "http": http}
    smtp.close()
    http.close()


@pytest.fixture
def start_notify(amqp_uri, database_url, loopback, vhost, rabbit_admin):
    """Start the notify service (config overrides allowed) on a free port; stopped after the test."""
    stacks = contextlib.ExitStack()

    def start(**overrides):
        port = support.free_port()
        config = support.base_config(
            amqp_uri, database_url, WEB_ADDRESSES={"notify": f"127.0.0.1:{port}"},
            SMTP_HOST="127.0.0.1", SMTP_PORT=loopback["smtp"].port, SMTP_FROM="cwb@jns.example.cn",
            NOTIFY_POLL_INTERVAL=0.1, NOTIFY_MAX_ATTEMPTS=3, NOTIFY_RETRY_BASE_SECONDS=0.2, NOTIFY_RETRY_FACTOR=2,
            NOTIFY_SEND_TIMEOUT=5, WEBHOOK_TIMEOUT=6, NOTIFY_BULLETIN_SCHEDULE="false",
            # The tests' bots listen on loopback over http: allowed here, and only here.
            NOTIFY_WEBHOOK_HOSTS=["127.0.0.1"], NOTIFY_WEBHOOK_ALLOW_HTTP=True, NOTIFY_WEBHOOK_ALLOW_PRIVATE=True)
        config.update(overrides)
        stacks.enter_context(support.running_services(config, NotifyService))
        for queue in ("evt-tasks-task_overdue--notify.on_task_overdue",
                      "evt-scoring-score_published--notify.on_score_published"):
            support.wait_until(lambda: rabbit_admin.queue(vhost, queue), message=f"queue {queue}")
        return {"api": support.ApiClient(f"http://127.0.0.1:{port}"), "amqp_uri": amqp_uri, "config": config,
                "database_url": database_url, "bot": f"http://127.0.0.1:{loopback['http'].port}", **loopback}
    yield start
    stacks.close()


@pytest.fixture
def notify_stack(start_notify):
    return start_notify()


def publish(amqp_uri: str, service: str, envelope) -> None:
    """What a producer's outbox relay does: a persistent JSON message on `<service>.events`."""
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        exchange = Exchange(f"{service}.events", type="topic", durable=True)
        exchange(channel).declare()
        KombuProducer(channel).publish(envelope.to_message(), exchange=exchange, routing_key=envelope.event_type,
                                       serializer="json", delivery_mode=2, message_id=str(envelope.event_id))


def count(database_url: str, table) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar_one()
    finally:
        engine.dispose()


def consumed(api, event_type: str, outcome: str) -> float:
    pattern = (r'chuangwei_events_consumed_total\{event_type="%s",outcome="%s",service="notify"\} ([0-9.]+)'
               % (event_type, outcome))
    match = re.search(pattern, api.get("/metrics").text)
    return float(match.group(1)) if match else 0.0


def task_ref(task_id: str, subject_id: str, name: str, category=("PT", "公厕"), item="便池干净，无积粪、无尿垢",
             place="周家山路公厕", deadline=None, status="open") -> TaskRef:
    return TaskRef(
        task_id=task_id, inspection_id=f"insp-{task_id}", inspecting_node=STREET, owner_node=STREET,
        responsible=Responsible(subject_id=subject_id, node=COMMUNITY, name=name),
        place=PlaceRef(place_id=f"place-{task_id}", name=place, place_type="public_toilet", node=COMMUNITY,
                       address="周家山路12号") if place else None,
        item_code=f"{category[0]}-02", item_text=item, category_code=category[0], category_name=category[1],
        severity="major", deadline_at=deadline or datetime(2026, 11, 10, 18, tzinfo=CST), status=status)


def inbox_of(api, user: str, name: str | None = None):
    """The client of the person whose account is `user`: contacts name it as their `inbox_user`."""
    return api.as_user(name or user, [("viewer", support.TEST_PROVINCE)], subject=user)


def inbox_items(api, user: str, **params) -> list[dict]:
    response = inbox_of(api, user).get("/inbox", params=params)
    assert response.status_code == 200, response.text
    return response.json()


TASKS = Producer(node=STREET, service="tasks")
SCORING = Producer(node=STREET, service="scoring")


def register_contacts(api, bot: str):
    responsible = api.post("/contacts", {
        "owner_kind": "subject", "owner_id": "subj-zjs", "node": COMMUNITY, "name": "周家山社区 张主任",
        "inbox_user": "zhang", "email": "zjs@community.example.cn", "webhook_url": f"{bot}/ok/zjs",
        "webhook_format": "wecom"})
    assert responsible.status_code == 201, responsible.text
    office = api.post("/contacts", {"owner_kind": "node", "owner_id": STREET, "node": STREET,
                                    "name": "金牛山街道创卫办", "inbox_user": "jns.cwb"})
    assert office.status_code == 201, office.text
    return responsible.json(), office.json()


def test_overdue_task_sends_one_urge_notice_per_channel_and_a_redelivery_sends_nothing(notify_stack):
    api, smtp, http = notify_stack["api"], notify_stack["smtp"], notify_stack["http"]
    register_contacts(api, notify_stack["bot"])
    overdue = make_event(TaskOverdue(task=task_ref("task-1", "subj-zjs", "周家山社区"),
                                     overdue_since=datetime(2026, 11, 10, 18, tzinfo=CST), urge_count=1),
                         TASKS, correlation_id="task-1")
    duplicates_before = consumed(api, "task_overdue", "duplicate")
    # The registry is the process's: these counters carry other tests' counts, so compare differences.
    sent_before = {c: support.metric(api, "chuangwei_notify_sent_total", channel=c) for c in ("email", "webhook")}
    urges_before = support.metric(api, "chuangwei_notify_notice_deliveries_total", notice="urge", outcome="sent")
    latencies_before = support.metric(api, "chuangwei_notify_delivery_latency_seconds_count", channel="email")
    publish(notify_stack["amqp_uri"], "tasks", overdue)

    [mail] = support.wait_until(lambda: smtp.records(), message="an e-mail on the SMTP server")
    [call] = support.wait_until(lambda: http.records(), message="a webhook call")
    inbox = inbox_items(api, "zhang")
    assert len(inbox) == 1 and inbox[0]["notice_type"] == "urge"
    assert inbox[0]["title"].startswith("督办单（第1次）") and "周家山社区" in inbox[0]["title"]
    assert "便池干净，无积粪、无尿垢" in inbox[0]["body_markdown"]
    office_inbox = inbox_items(api, "jns.cwb")
    assert [n["notice_type"] for n in office_inbox] == ["urge"]  # the inspecting office is told too

    message = email.message_from_bytes(base64.b64decode(mail["data"]), policy=email.policy.default)
    assert mail["to"] == ["zjs@community.example.cn"] and message["From"] == "cwb@jns.example.cn"
    assert message["Subject"].startswith("督办单（第1次）")
    assert "周家山路公厕" in message.get_body(("plain",)).get_content()
    assert "<table>" in message.get_body(("html",)).get_content()

    assert call["path"] == "/ok/zjs" and call["body"]["msgtype"] == "markdown"
    assert "### 督办单（第1次催办）" in call["body"]["markdown"]["content"]

    # Read and acknowledge (签收) in the inbox.
    notice_id = inbox[0]["notification_id"]
    assert inbox_of(api, "someone.else").post(f"/inbox/{notice_id}/read").status_code == 403
    assert api.post(f"/inbox/{notice_id}/read").status_code == 403  # not even the province's administrator
    zhang = inbox_of(api, "zhang", "张主任")
    read = zhang.post(f"/inbox/{notice_id}/read")
    assert read.status_code == 200 and read.json()["read_at"] and "<table>" in read.json()["body_html"]
    assert inbox_items(api, "zhang", unread="true") == []
    ack = zhang.post(f"/inbox/{notice_id}/ack").json()
    assert ack["acknowledged_by"] == "张主任 (zhang)" and ack["acknowledged_at"]

    # The broker redelivers the same event: nothing new anywhere.
    publish(notify_stack["amqp_uri"], "tasks", overdue)
    support.wait_until(lambda: consumed(api, "task_overdue", "duplicate") == duplicates_before + 1,
                       message="the redelivery recognised as a duplicate")
    # The duplicate's transaction is over and made no rows (every send comes from a row); a later
    # marker event, sent and delivered, shows the channels carried nothing in between.
    marker = make_event(TaskOverdue(task=task_ref("task-1m", "subj-zjs", "周家山社区", item="果皮箱清洁"),
                                    overdue_since=datetime(2026, 11, 10, 18, tzinfo=CST), urge_count=1), TASKS)
    publish(notify_stack["amqp_uri"], "tasks", marker)
    support.wait_until(lambda: len(smtp.records()) == 2 and len(http.records()) == 2, message="the marker's sends")
    assert "果皮箱清洁" in http.records()[1]["body"]["markdown"]["content"]
    assert len(inbox_items(api, "zhang")) == 2
    assert count(notify_stack["database_url"], Notification.__table__) == 8  # inbox, e-mail, webhook + office inbox, twice
    sent = api.get("/notifications", params={"event_id": str(overdue.event_id)}).json()
    assert sorted(n["channel"] for n in sent) == ["email", "inbox", "inbox", "webhook"]
    assert all(n["delivery_status"] == "sent" for n in sent)
    # Counted just after each attempt's commit: wait for the marker's to be counted.
    support.wait_until(lambda: {c: support.metric(api, "chuangwei_notify_sent_total", channel=c) - sent_before[c]
                                for c in ("email", "webhook")} == {"email": 2, "webhook": 2},
                       message="both sends of both events counted")
    assert support.metric(api, "chuangwei_notify_notice_deliveries_total", notice="urge",
                          outcome="sent") - urges_before == 4  # e-mail and webhook, of the event and the marker
    assert support.metric(api, "chuangwei_notify_delivery_latency_seconds_count", channel="email") \
        - latencies_before == 2


def test_a_failing_webhook_is_dead_lettered_after_three_tries_and_delivered_on_replay(notify_stack):
    api, http = notify_stack["api"], notify_stack["http"]
    contact = api.post("/contacts", {"owner_kind": "subject", "owner_id": "subj-wjd", "node": COMMUNITY,
                                     "name": "五星街道办群", "webhook_url": f"{notify_stack['bot']}/fail3/wjd",
                                     "webhook_format": "dingtalk"})
    assert contact.status_code == 201, contact.text
    opened = make_event(TaskOpened(task=task_ref("task-2", "subj-wjd", "五星社区"),
                                   opened_at=datetime(2026, 11, 5, 9, tzinfo=CST)), TASKS)
    publish(notify_stack["amqp_uri"], "tasks", opened)

    [dead] = support.wait_until(lambda: api.get("/dead-letters").json(), timeout=20, message="a dead letter")
    assert dead["channel"] == "webhook" and dead["attempts"] == 3 and "HTTP 500" in dead["last_error"]
    assert dead["title"].startswith("整改通知书")
    calls = http.records()
    assert [c["status"] for c in calls] == [500, 500, 500]
    assert calls[0]["body"]["msgtype"] == "markdown" and calls[0]["body"]["markdown"]["title"].startswith("整改通知书")
    [notice] = api.get("/notifications", params={"event_id": str(opened.event_id)}).json()
    assert notice["delivery_status"] == "dead"
    metrics = api.get("/metrics").text
    assert re.search(r'chuangwei_notify_dead_lettered_total\{channel="webhook"\} [1-9]', metrics)
    # by notice type too: what the urge-notice alert watches
    assert re.search(r'chuangwei_notify_notice_deliveries_total\{notice="rectification",outcome="failed"\} [1-9]', metrics)
    assert re.search(r'chuangwei_notify_notice_deliveries_total\{notice="rectification",outcome="dead_lettered"\} [1-9]',
                     metrics)

    # Who replayed is the signed-in administrator, whatever a body claims.
    replay = api.as_user("值班员 李强", [("administrator", STREET)], subject="liqiang").post(
        f"/dead-letters/{dead['dead_letter_id']}/replay", {"operator": "冒名者"})
    assert replay.status_code == 200, replay.text
    support.wait_until(lambda: len(http.records()) == 4, message="the replayed call")
    assert http.records()[3]["status"] == 200
    support.wait_until(lambda: api.get("/notifications", params={"event_id": str(opened.event_id)}
                                       ).json()[0]["delivery_status"] == "sent", message="delivery marked sent")
    assert api.get("/dead-letters").json() == []
    [replayed] = api.get("/dead-letters", params={"state": "replayed"}).json()
    assert replayed["replayed_by"] == "值班员 李强 (liqiang)"  # the signed-in administrator
    again = api.post(f"/dead-letters/{dead['dead_letter_id']}/replay", {})
    assert again.status_code == 409, again.text
    missing = api.post("/dead-letters/no-such-id/replay", {})
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "dead_letter_id", missing.text
    # A later notice to another bot, delivered, shows the refused replays sent nothing.
    assert api.post("/contacts", {"owner_kind": "subject", "owner_id": "subj-marker", "node": COMMUNITY,
                                  "name": "标记群", "webhook_url": f"{notify_stack['bot']}/ok/marker"}).status_code == 201
    publish(notify_stack["amqp_uri"], "tasks", make_event(TaskOpened(task=task_ref("task-2m", "subj-marker", "五星社区"),
                                                                     opened_at=datetime(2026, 11, 5, 9, tzinfo=CST)), TASKS))
    support.wait_until(lambda: [c for c in http.records() if c["path"] == "/ok/marker"], message="the marker's call")
    assert [c["path"] for c in http.records()] == ["/fail3/wjd"] * 4 + ["/ok/marker"]


def score(subject_id: str, name: str, period: str, value: float | None, rank: int | None, peers: int, revision=1,
          vetoed=False, reasons=(), ranked=True, inputs=4, node=COMMUNITY) -> ScorePublished:
    return ScorePublished(
        scoring_node=STREET, subject=ScoredSubject(subject_id=subject_id, node=node, name=name,
                                                   subject_type="child_unit"),
        period_kind="month", period=period, score=value, scale=100, rank=rank, peers=peers, ranked=ranked,
        vetoed=vetoed, veto_reasons=list(reasons), inputs=inputs, policy=PolicyRef(policy_id="street", version=1),
        revision=revision, computed_at=datetime.now(timezone.utc))


# --- the monthly bulletin from seeded scores and tasks ----------------------------------------------
# Each test starts its own notify service and seeds the same events (`seed_scores_and_tasks`); none
# relies on another having run.


def seed_scores_and_tasks(notify_stack) -> None:
    """Publish October's and November's community scores and November's tasks (one found in
    October, one overdue, one relapsed) as the producers would, and wait until notify holds them."""
    api, amqp = notify_stack["api"], notify_stack["amqp_uri"]
    # October: 甲 1, 乙 2, 丙 3, 丁 4.
    october = [score("a", "甲社区", "2026-10", 92, 1, 4), score("b", "乙社区", "2026-10", 90, 2, 4),
               score("c", "丙社区", "2026-10", 88, 3, 4), score("d", "丁社区<东片>", "2026-10", 80, 4, 4)]
    # November: 丙 95 (1st), 甲 90 (2nd), 丁 85 (3rd), 乙 70 (4th, vetoed); 戊 inspected once: not ranked.
    # 丙's revision 1 arrives after revision 2 and must not win.
    november = [score("c", "丙社区", "2026-11", 95, 1, 4, revision=2), score("a", "甲社区", "2026-11", 90, 2, 4),
                score("d", "丁社区<东片>", "2026-11", 85, 3, 4),
                score("b", "乙社区", "2026-11", 70, 4, 4, vetoed=True, reasons=["被区创卫办通报批评"]),
                score("e", "戊社区", "2026-11", 99, None, 4, ranked=False, inputs=1),
                score("c", "丙社区", "2026-11", 60, 4, 4, revision=1),
                # The street office's own aggregate (ranked among the district's streets): no peer of its
                # communities, so no second "rank 1" in its bulletin.
                score(STREET, "金牛山街道", "2026-11", 86.5, 1, 1, node=STREET, inputs=20)]
    relapsed_before = consumed(api, "task_relapsed", "processed")
    overdue_before = consumed(api, "task_overdue", "processed")
    for payload in october + november:
        publish(amqp, "scoring", make_event(payload, SCORING))
    nov = lambda day: datetime(2026, 11, day, 10, tzinfo=CST)  # noqa: E731
    toilet, refuse, river = ("PT", "公厕"), ("RS", "垃圾站房"), ("RV", "河道")
    opened = [("t1", "a", "甲社区", toilet, 3), ("t2", "b", "乙社区", toilet, 4), ("t3", "c", "丙社区", toilet, 5),
              ("t4", "a", "甲社区", refuse, 6), ("t5", "d", "丁社区<东片>", refuse, 7), ("t6", "b", "乙社区", river, 8)]
    for task_id, subject, name, category, day in opened:
        publish(amqp, "tasks", make_event(TaskOpened(
            task=task_ref(task_id, subject, name, category=category, deadline=nov(day + 2)),
            opened_at=nov(day)), TASKS))
    # History entered in November: the problem was found in October, so it is October's.
    publish(amqp, "tasks", make_event(TaskOpened(
        task=task_ref("t7", "a", "甲社区", category=river, deadline=nov(25)), opened_at=nov(20),
        found_at=datetime(2026, 10, 12, 10, tzinfo=CST)), TASKS))
    publish(amqp, "tasks", make_event(TaskOverdue(task=task_ref("t2", "b", "乙社区", category=toilet,
                                                               deadline=nov(6)), overdue_since=nov(6), urge_count=2),
                                      TASKS))
    publish(amqp, "tasks", make_event(TaskRelapsed(task=task_ref("t5", "d", "丁社区<东片>", category=refuse,
                                                                deadline=nov(9)), relapse_of="t0",
                                                   closed_at=datetime(2026, 10, 20, tzinfo=CST)), TASKS))
    db = notify_stack["database_url"]
    support.wait_until(lambda: count(db, TaskRow.__table__) == 7 and count(db, ScoreRow.__table__) == 10,
                       message="the projections")
    # The metrics are the test process's: count from where this stack started.
    support.wait_until(lambda: consumed(api, "task_relapsed", "processed") >= relapsed_before + 1
                       and consumed(api, "task_overdue", "processed") >= overdue_before + 1, message="the task events")


def november_bulletin(notify_stack) -> dict:
    """Seed the events and make November's bulletin (released, as a POST does): the response body."""
    seed_scores_and_tasks(notify_stack)
    response = notify_stack["api"].post("/bulletins", {"period": "2026-11"})
    assert response.status_code == 201, response.text
    return response.json()


def test_the_public_board_is_empty_until_a_bulletin_is_released(notify_stack):
    """With scores and tasks held but no bulletin made, the anonymous board answers 404."""
    seed_scores_and_tasks(notify_stack)
    assert notify_stack["api"].anonymous().get("/board").status_code == 404


def test_a_made_bulletin_is_the_first_revision_titled_for_the_month_and_names_who_asked(notify_stack):
    """POST /bulletins makes revision 1 of 「…2026年11月创卫工作月度通报」 for the signed-in caller."""
    bulletin = november_bulletin(notify_stack)
    assert bulletin["requested_by"] == "测试管理员 (user-测试管理员)"
    assert bulletin["revision"] == 1 and bulletin["title"].endswith("2026年11月创卫工作月度通报")


def test_the_released_board_shows_anyone_the_ranking_and_the_red_and_black_lists_only(notify_stack):
    """The anonymous board shows the ranking with movement and veto marks, the red list (commended)
    and the black list (一票否决), and neither the veto's reasons nor task ids."""
    november_bulletin(notify_stack)
    board = notify_stack["api"].anonymous().get("/board")
    assert board.status_code == 200, board.text
    assert set(board.json()) == {"node", "office", "period", "revision", "title", "released_at", "ranking", "red",
                                 "black"}
    assert [(r["rank"], r["name"], r["movement"], r["vetoed"]) for r in board.json()["ranking"]] == [
        (1, "丙社区", "↑2", False), (2, "甲社区", "↓1", False), (3, "丁社区<东片>", "↑1", False), (4, "乙社区", "↓2", True)]
    assert [r["name"] for r in board.json()["red"]] == ["丙社区", "甲社区", "丁社区<东片>"]
    assert board.json()["black"] == [{"rank": 4, "name": "乙社区", "score": 70, "why": "一票否决"}]
    assert "被区创卫办通报批评" not in board.text and "t2" not in board.text


def test_the_bulletin_ranks_the_highest_revision_of_each_score_with_movement_since_october(notify_stack):
    """丙's revision 2 (95) wins over the later revision 1; computed by hand: 丙 3→1 ↑2, 甲 1→2 ↓1,
    丁 4→3 ↑1, 乙 2→4 ↓2; the street's own aggregate is not among its communities."""
    data = november_bulletin(notify_stack)["data"]
    # Computed by hand: 丙 3→1 ↑2, 甲 1→2 ↓1, 丁 4→3 ↑1, 乙 2→4 ↓2.
    assert [(r["rank"], r["name"], r["score"]) for r in data["ranking"]] == [
        (1, "丙社区", 95), (2, "甲社区", 90), (3, "丁社区<东片>", 85), (4, "乙社区", 70)]
    assert [r["movement"] for r in data["ranking"]] == [2, -1, 1, -2]
    assert [r["movement_text"] for r in data["ranking"]] == ["↑2", "↓1", "↑1", "↓2"]
    assert "金牛山街道" not in [r["name"] for r in data["ranking"] + data["unranked"]]


def test_the_bulletin_lists_the_unranked_the_vetoed_the_commended_and_the_criticised(notify_stack):
    """戊 (one inspection) is unranked; 乙 vetoed and criticised with the veto's reason; 丙, 甲 and 丁
    commended."""
    data = november_bulletin(notify_stack)["data"]
    assert [u["name"] for u in data["unranked"]] == ["戊社区"]
    assert [v["name"] for v in data["vetoed"]] == ["乙社区"]
    assert [c["name"] for c in data["commended"]] == ["丙社区", "甲社区", "丁社区<东片>"]
    [criticised] = data["criticised"]
    assert criticised["name"] == "乙社区" and any("被区创卫办通报批评" in r for r in criticised["reasons"])


def test_the_bulletin_counts_the_months_problems_by_category_with_overdue_and_relapsed_tasks(notify_stack):
    """November's six problems (the one entered in November but found in October counts for October):
    公厕 3, 垃圾站房 2 on top, t2 overdue, t5 relapsed."""
    data = november_bulletin(notify_stack)["data"]
    assert [(c["category_name"], c["count"]) for c in data["top_categories"]] == [("公厕", 3), ("垃圾站房", 2)]
    assert [t["task_id"] for t in data["overdue_tasks"]] == ["t2"]
    assert [t["task_id"] for t in data["relapsed_tasks"]] == ["t5"]
    assert data["figures"]["tasks_opened"] == 6 and data["figures"]["problems_found"] == 6
    october_bulletin = notify_stack["api"].post("/bulletins", {"period": "2026-10", "notify": False}).json()["data"]
    assert october_bulletin["figures"]["problems_found"] == 1


def test_the_bulletin_as_markdown_has_the_ranking_table_with_markup_neutralised(notify_stack):
    """The Markdown ranking rows read in order, 丁社区<东片> with full-width brackets, the veto marked."""
    bulletin = november_bulletin(notify_stack)
    markdown = notify_stack["api"].get(f"/bulletins/{bulletin['bulletin_id']}/markdown")
    assert markdown.status_code == 200 and markdown.headers["Content-Type"].startswith("text/markdown")
    rows = [line for line in markdown.text.splitlines() if re.match(r"^\| \d ", line)]
    assert rows == ["| 1 | 丙社区 | 95.00 |  | ↑2 |", "| 2 | 甲社区 | 90.00 |  | ↓1 |",
                    "| 3 | 丁社区＜东片＞ | 85.00 |  | ↑1 |", "| 4 | 乙社区（一票否决） | 70.00 |  | ↓2 |"]


def test_the_bulletin_as_html_is_autoescaped_and_in_rank_order(notify_stack):
    """The HTML escapes 丁社区<东片> and lists 丙, 甲, then 乙 (一票否决)."""
    bulletin = november_bulletin(notify_stack)
    html = notify_stack["api"].get(f"/bulletins/{bulletin['bulletin_id']}/html")
    assert html.status_code == 200 and html.headers["Content-Type"].startswith("text/html")
    assert "丁社区&lt;东片&gt;" in html.text and "丁社区<东片>" not in html.text  # autoescaped
    assert html.text.index("丙社区") < html.text.index("甲社区") < html.text.index("乙社区（一票否决）")


def test_the_bulletin_as_pdf_is_an_attachment_whose_text_reads_in_rank_order(notify_stack):
    """The same bulletin as a PDF (reportlab, an embedded CJK font subset): named by node, month and
    revision, its extracted text has the ranking in order, the unranked note and the veto's reason;
    an unknown bulletin is 404."""
    from pypdf import PdfReader
    bulletin = november_bulletin(notify_stack)
    api = notify_stack["api"]
    pdf = api.get(f"/bulletins/{bulletin['bulletin_id']}/pdf")
    assert pdf.status_code == 200 and pdf.headers["Content-Type"] == "application/pdf"
    assert pdf.headers["Content-Disposition"].startswith('attachment; filename="bulletin-411502008000-2026-11-r1.pdf"')
    assert pdf.content.startswith(b"%PDF")
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert text.index("丙社区") < text.index("甲社区") < text.index("丁社区<东片>") < text.index("乙社区（一票否决）")
    assert "戊社区（样本不足，不参加排名）" in text and "被区创卫办通报批评" in text
    assert api.get("/bulletins/no-such-bulletin/pdf").status_code == 404


def test_bulletins_are_kept_a_second_one_is_a_new_revision_and_bad_periods_make_none(notify_stack):
    """Making November's bulletin again gives revision 2, listed newest first with revision 1; month
    13 and 2099 are refused naming the period, and no revision is added."""
    november_bulletin(notify_stack)
    api = notify_stack["api"]
    again = api.post("/bulletins", {"period": "2026-11"}).json()
    assert again["revision"] == 2
    listed = api.get("/bulletins", params={"period": "2026-11"}).json()
    assert [b["revision"] for b in listed] == [2, 1]
    for period in ("2026-13", "2099-01"):
        refused = api.post("/bulletins", {"period": period})
        assert refused.status_code == 422 and [e["field"] for e in refused.json()["errors"]] == ["period"], refused.text
    assert [b["revision"] for b in api.get("/bulletins", params={"period": "2026-11"}).json()] == [2, 1]  # none made


def test_no_bulletin_for_a_month_that_has_not_ended(notify_stack):
    """Issue 27: the running month's bulletin was accepted and published to the public board.
    Refused naming the period, in Chinese first; nothing is kept; last month's is made."""
    api = notify_stack["api"]
    now = datetime.now(CST)
    current = Period.containing(PeriodKind.month, now)
    refused = api.post("/bulletins", {"period": current.key, "notify": False})
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["errors"]
    assert error["field"] == "period" and error["reason"].startswith("本月尚未结束，不能发布本月通报"), error
    assert api.get("/bulletins", params={"period": current.key}).json() == []
    assert api.post("/bulletins", {"period": current.previous().key, "notify": False}).status_code == 201


def test_a_slow_channel_does_not_hold_up_the_others(start_notify, tmp_path):
    """Ordering, not a stopwatch: the SMTP server and one bot hang until the test lets them go,
    with timeouts far beyond the test's reach, so the fast bot's call can only have been made
    while both were still hanging."""
    blackhole = LoopbackServer("blackhole", tmp_path / "hole.jsonl")  # an SMTP server that never answers
    try:
        stack = start_notify(SMTP_PORT=blackhole.port, SMTP_TIMEOUT=600, NOTIFY_SEND_TIMEOUT=600,
                             WEBHOOK_TIMEOUT=600)
        api, http = stack["api"], stack["http"]
        contacts = {}
        for name, extra in (("张主任", {"email": "zjs@community.example.cn", "webhook_url": f"{stack['bot']}/held/zjs"}),
                            ("社区群", {"webhook_url": f"{stack['bot']}/ok/fast", "inbox_user": "zhang"})):
            created = api.post("/contacts", {"owner_kind": "subject", "owner_id": "subj-zjs", "node": COMMUNITY,
                                             "name": name, **extra})
            assert created.status_code == 201, created.text
            contacts[created.json()["contact_id"]] = name
        publish(stack["amqp_uri"], "tasks", make_event(TaskOpened(task=task_ref("task-9", "subj-zjs", "周家山社区"),
                                                                  opened_at=datetime.now(timezone.utc)), TASKS))
        support.wait_until(lambda: blackhole.log(), timeout=30, message="the e-mail hanging on the mute server")
        support.wait_until(lambda: [c for c in http.log() if c["path"] == "/held/zjs"], timeout=30,
                           message="the held bot's call hanging")
        support.wait_until(lambda: [c for c in http.records() if c["path"] == "/ok/fast"], timeout=30,
                           message="the fast bot, while the SMTP server and the held bot hang")

        def deliveries():
            return {(n["channel"], contacts[n["contact_id"]]): n["delivery_status"]
                    for n in api.get("/notifications").json()}
        assert deliveries() == {("email", "张主任"): "pending", ("webhook", "张主任"): "pending",
                                ("webhook", "社区群"): "sent", ("inbox", "社区群"): "sent"}
        [mail] = api.get("/notifications", params={"channel": "email"}).json()
        assert mail["attempts"] == 0  # its first attempt is still hanging
        assert len(inbox_items(api, "zhang")) == 1

        http.tell("open")  # the held bot answers at last and is delivered too
        support.wait_until(lambda: deliveries()[("webhook", "张主任")] == "sent", timeout=30,
                           message="the held bot's delivery")
        assert deliveries()[("email", "张主任")] == "pending"

        blackhole.tell("hang up")  # the SMTP server drops the line: tried three times, then dead-lettered
        [dead] = support.wait_until(lambda: api.get("/dead-letters").json(), timeout=30, message="the e-mail dead letter")
        assert (dead["channel"], dead["attempts"]) == ("email", 3)
        assert dead["last_error"].startswith(f"SMTP 127.0.0.1:{blackhole.port}: SMTPServerDisconnected")
    finally:
        blackhole.close()


def test_rules_and_templates_are_per_node_and_versioned(notify_stack):
    api, smtp, http = notify_stack["api"], notify_stack["smtp"], notify_stack["http"]
    default = api.get(f"/rules/{COMMUNITY}").json()
    assert default["source"] == "default" and default["version"] == 0
    assert any(r["id"] == "urge-notice" for r in default["document"]["rules"])

    bad = api.put(f"/rules/{STREET}", {"document": {"rules": [{"id": "x", "event": "task_exploded", "notice": "urge",
                                                               "to": ["responsible"], "channels": ["inbox"]}]}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "rules.0.event"
    assert api.put("/rules/41150200800X", {"document": {"rules": []}}).status_code == 422
    outside = api.put("/rules/411503000000", {"document": {"rules": []}})  # another district
    assert outside.status_code == 422 and "jurisdiction" in outside.json()["errors"][0]["reason"]
    inbox_only = {"rules": [{"id": "urge-inbox", "event": "task_overdue", "notice": "urge", "to": ["responsible"],
                             "channels": ["inbox"]}]}
    assert api.put(f"/rules/{STREET}", {"author": "王芳", "document": inbox_only}).status_code == 422
    put = api.as_user("王芳", [("administrator", STREET)], subject="wangfang").put(f"/rules/{STREET}",
                                                                                  {"document": inbox_only})
    assert put.status_code == 200, put.text
    assert put.json()["author"] == "王芳 (wangfang)"
    assert put.json()["version"] == 1 and put.json()["source"] == "node"
    inherited = api.get(f"/rules/{COMMUNITY}").json()
    assert inherited["source"] == "inherited" and inherited["from_node"] == STREET and inherited["version"] == 1

    bad_template = api.put(f"/templates/{STREET}/urge.md", {"source": "{% if %}"})
    assert bad_template.status_code == 422 and bad_template.json()["errors"][0]["field"] == "source"
    override = api.put(f"/templates/{STREET}/urge.md", {
        "source": '{% set title = "街道督办单：" ~ task.item_text %}请立即整改：{{ task.item_text }}\n'})
    assert override.status_code == 200, override.text
    got = api.get(f"/templates/{COMMUNITY}/urge.md").json()
    assert got["origin"] == "database" and got["from_node"] == STREET

    register_contacts(api, notify_stack["bot"])
    overdue = make_event(TaskOverdue(task=task_ref("task-3", "subj-zjs", "周家山社区"),
                                     overdue_since=datetime(2026, 11, 10, 18, tzinfo=CST), urge_count=1), TASKS)
    publish(notify_stack["amqp_uri"], "tasks", overdue)
    [notice] = support.wait_until(lambda: inbox_items(api, "zhang"), message="the notice")
    assert notice["title"] == "街道督办单：便池干净，无积粪、无尿垢"
    assert notice["body_markdown"] == "请立即整改：便池干净，无积粪、无尿垢\n"
    # The notice and every other delivery of the event are made in one transaction: the list is
    # complete once the notice is there, and nothing is ever sent without a row.
    made = api.get("/notifications", params={"event_id": str(overdue.event_id)}).json()
    assert [(n["channel"], n["role"]) for n in made] == [("inbox", "responsible")]  # inbox only, responsible only
    assert smtp.records() == [] and http.records() == []
    assert inbox_items(api, "jns.cwb") == []

    assert api.put(f"/rules/{STREET}", {"document": default["document"]}).json()["version"] == 2
    assert [v["version"] for v in api.get(f"/rules/{STREET}/versions").json()] == [1, 2]
    deleted = api.request("DELETE", f"/templates/{STREET}/urge.md")
    assert deleted.status_code == 204
    assert api.get(f"/templates/{COMMUNITY}/urge.md").json()["origin"] == "default"
    assert api.get(f"/templates/{STREET}/nonsense.md").status_code == 404


def test_each_event_reaches_the_right_people_with_the_right_notice(notify_stack):
    from services.contracts.events.inspection import (ChecklistRef, Finding, InspectionReleased, InspectionSubmitted,
                                                      SubjectRef)
    from services.contracts.events.tasks import TaskClosed, TaskEscalated, TaskStatusChanged
    api, amqp = notify_stack["api"], notify_stack["amqp_uri"]
    district = "411502000000"
    for body in ({"owner_kind": "subject", "owner_id": "subj-zjs", "node": COMMUNITY, "name": "张主任",
                  "inbox_user": "zhang"},
                 {"owner_kind": "node", "owner_id": STREET, "node": STREET, "name": "街道创卫办", "inbox_user": "street"},
                 {"owner_kind": "node", "owner_id": district, "node": district, "name": "区创卫办",
                  "inbox_user": "district"}):
        assert api.post("/contacts", body).status_code == 201
    no_channel = api.post("/contacts", {"owner_kind": "subject", "owner_id": "x", "node": COMMUNITY, "name": "无渠道"})
    assert no_channel.status_code == 422 and no_channel.json()["error"] == "validation_error", no_channel.text
    twice = api.post("/contacts", {"owner_kind": "node", "owner_id": STREET, "node": STREET, "name": "街道创卫办",
                                   "inbox_user": "again"})
    assert twice.status_code == 409 and [e["field"] for e in twice.json()["errors"]] == ["name"], twice.text
    assert len(api.get("/contacts").json()) == 3  # neither was stored

    finished = {t: support.events_consumed(api, "notify", t) for t in ("task_status_changed", "score_published")}
    now = datetime.now(timezone.utc)
    ref = task_ref("task-5", "subj-zjs", "周家山社区")
    events = [
        ("tasks", TaskOpened(task=ref, opened_at=now, note="限期三日")),
        ("tasks", TaskStatusChanged(task=ref, from_status="fix_submitted", to_status="open", actor="李强",
                                    reason="整改照片不清晰", at=now)),
        ("tasks", TaskStatusChanged(task=ref, from_status="open", to_status="in_progress", actor="张主任", at=now)),
        ("tasks", TaskEscalated(task=ref, to_node=district, reason="涉及产权单位，社区无法协调",
                                answer_due_at=now + timedelta(days=5), at=now)),
        ("tasks", TaskClosed(task=ref, closed_at=now, verified_by="李强", on_time=True, hours_to_fix=20)),
        ("tasks", TaskRelapsed(task=task_ref("task-6", "subj-zjs", "周家山社区"), relapse_of="task-5", closed_at=now)),
        ("inspection", InspectionSubmitted(
            inspection_id="6f1c1b7e-1111-4c1d-9d8a-3f6a1c2b7e11", inspecting_node=STREET, kind="unannounced",
            subject=SubjectRef(subject_id="subj-zjs", node=COMMUNITY, name="周家山社区", subject_type="child_unit"),
            checklist=ChecklistRef(catalogue_id="default", version="2010.1", code="public-toilet"),
            inspected_at=now, submitted_at=now, inspectors=["暗访组"], score=90, scale=100, points_available=100,
            points_deducted=10, findings=[Finding(item_code="PT-02", item_text="便池干净", category_code="PT",
                                                  category_name="公厕", severity="minor", findings=2, deduction=10,
                                                  max_points=20, deadline_hours=24)])),
        ("scoring", score("subj-zjs", "周家山社区", "2026-11", 96, 1, 5)),
        ("scoring", score("subj-zjs", "周家山社区", "2026-11", 97, 1, 5, revision=2)),  # same commendation
    ]
    for service, payload in events:
        publish(amqp, service, make_event(payload, Producer(node=STREET, service=service)))

    def inbox(user):
        return sorted(n["title"].split("：")[0] for n in inbox_items(api, user))
    # The unannounced inspection (暗访) is not told until its office releases it.
    expected_zhang = sorted(["整改通知书", "复查未通过，请继续整改", "复查通过，已销号", "问题反弹提醒", "通报表扬"])
    support.wait_until(lambda: inbox("zhang") == expected_zhang, timeout=20, message="the subject's notices")
    assert support.wait_until(lambda: inbox("district"), message="the escalation") == ["上报协调函"]
    support.wait_until(lambda: inbox("street") == ["上报协调函", "问题反弹提醒"], message="the inspecting office's")
    for event_type in finished:  # both status changes and both revisions handled, each in its transaction
        support.wait_consumed(api, "notify", event_type, finished[event_type] + 2)
    assert inbox("zhang") == expected_zhang  # in_progress and the second score revision sent nothing
    publish(amqp, "inspection", make_event(InspectionReleased(
        inspection_id="6f1c1b7e-1111-4c1d-9d8a-3f6a1c2b7e11", inspecting_node=STREET,
        subject=SubjectRef(subject_id="subj-zjs", node=COMMUNITY, name="周家山社区", subject_type="child_unit"),
        released_at=now), Producer(node=STREET, service="inspection")))
    expected_zhang = sorted(expected_zhang + ["暗访结果"])
    support.wait_until(lambda: inbox("zhang") == expected_zhang, message="the released inspection's notice")

    # A newsletter (创卫简报) goes to this office and to the subjects ranked in the month.
    sent = api.post("/newsletters", {"issue": 12, "title": "背街小巷集中整治", "content": "第一段\n\n第二段",
                                     "period": "2026-11"})
    assert sent.status_code == 201 and sent.json()["notifications"] == 2
    assert "创卫简报（第12期）" in inbox("zhang") and "创卫简报（第12期）" in inbox("street")


def test_the_scheduled_bulletin_is_made_once_however_many_instances_run(notify_stack):
    import eventlet
    from sqlalchemy.orm import Session
    from services.notify import operations as ops
    from services.plumbing.db import make_engine

    engine = make_engine(notify_stack["database_url"])
    ctx = ops.NotifyContext(home=STREET)
    first_of_december = datetime(2026, 12, 1, 0, 30, tzinfo=CST)

    def scheduled_run(_):
        with Session(engine) as session, session.begin():
            made = ops.generate_due_bulletin(session, ctx, day_of_month=1, now=first_of_december)
            return made.period if made else None
    try:
        with Session(engine) as session, session.begin():
            assert ops.generate_due_bulletin(session, ctx, day_of_month=2, now=first_of_december) is None
        results = list(eventlet.GreenPool(4).imap(scheduled_run, range(4)))
        assert sorted(results, key=str) == ["2026-11", None, None, None]
        kept = notify_stack["api"].get("/bulletins").json()
        assert [(b["trigger"], b["revision"], b["period"]) for b in kept] == [("schedule", 1, "2026-11")]
        with Session(engine) as session, session.begin():  # the next day: already done
            assert ops.generate_due_bulletin(session, ctx, now=first_of_december + timedelta(days=1)) is None
    finally:
        engine.dispose()


def test_a_due_bulletin_shows_as_missing_until_it_is_made(notify_stack):
    from sqlalchemy.orm import Session
    from services.notify import metrics, operations as ops
    from services.plumbing.db import make_engine

    engine = make_engine(notify_stack["database_url"])
    ctx = ops.NotifyContext(home=STREET)
    missing = lambda: metrics.BULLETIN_MISSING._value.get()  # noqa: E731, SLF001
    first_of_december = datetime(2026, 12, 1, 0, 30, tzinfo=CST)
    try:
        with Session(engine) as session, session.begin():
            assert ops.generate_due_bulletin(session, ctx, day_of_month=2, now=first_of_december) is None
        assert missing() == 0  # not due yet
        try:
            with Session(engine) as session, session.begin():
                assert ops.generate_due_bulletin(session, ctx, day_of_month=1, now=first_of_december) is not None
                raise RuntimeError("the run fails before it commits")
        except RuntimeError:
            pass
        assert missing() == 1  # due, and the failed run made none
        with Session(engine) as session, session.begin():
            assert ops.generate_due_bulletin(session, ctx, day_of_month=1, now=first_of_december) is not None
        with Session(engine) as session, session.begin():  # the next check finds it made
            assert ops.generate_due_bulletin(session, ctx, day_of_month=1, now=first_of_december) is None
        assert missing() == 0
    finally:
        engine.dispose()


def test_health_metrics_and_openapi(notify_stack):
    api = notify_stack["api"]
    health = api.get("/health")
    assert health.status_code == 200 and health.json()["checks"]["database:notify"] == "ok"
    spec = api.get("/openapi.json").json()
    for path in ("/contacts", "/rules/{node}", "/inbox", "/inbox/{notification_id}/ack", "/dead-letters",
                 "/dead-letters/{dead_letter_id}/replay", "/bulletins", "/newsletters", "/templates/{node}/{name}"):
        assert path in spec["paths"], path
    post = spec["paths"]["/contacts"]["post"]
    schema_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    contact_in = spec["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert "周家山社区" in json.dumps(contact_in, ensure_ascii=False)
    assert {"owner_kind", "owner_id", "node", "name"} <= set(contact_in["required"])
    assert {"201", "400", "401", "403", "413", "415", "4XX"} <= set(post["responses"])  # 409 and 422 are 4XX
    # What the service answers fits the document: a stored contact against the 201 schema.
    import jsonschema
    created = api.post("/contacts", {"owner_kind": "subject", "owner_id": "subj-doc", "node": COMMUNITY,
                                     "name": "文档核对", "inbox_user": "doc"})
    assert created.status_code == 201, created.text
    jsonschema.validate(created.json(), {**post["responses"]["201"]["content"]["application/json"]["schema"],
                                         "components": spec["components"]}, format_checker=jsonschema.FormatChecker())


def test_two_instances_share_the_deliveries_and_send_each_once(start_notify):
    first, second = start_notify(), start_notify()
    api, http = first["api"], first["http"]
    assert api.post("/contacts", {"owner_kind": "subject", "owner_id": "subj-zjs", "node": COMMUNITY, "name": "群",
                                  "webhook_url": f"{first['bot']}/ok/many"}).status_code == 201
    for n in range(30):
        publish(first["amqp_uri"], "tasks", make_event(TaskOpened(
            task=task_ref(f"task-{n}", "subj-zjs", "周家山社区", item=f"问题{n:02d}"),
            opened_at=datetime.now(timezone.utc)), TASKS))
    support.wait_until(lambda: len(http.records()) >= 30, timeout=60, message="30 webhook calls")
    # A notice sent after all thirty were delivered, then delivered itself: a second send of any
    # of them, from either instance, would have had to come before it.
    support.wait_until(lambda: all(n["delivery_status"] == "sent" for n in api.get(
        "/notifications", params={"limit": 100}).json()), message="all thirty marked sent")
    publish(first["amqp_uri"], "tasks", make_event(TaskOpened(
        task=task_ref("task-marker", "subj-zjs", "周家山社区", item="问题99"), opened_at=datetime.now(timezone.utc)), TASKS))
    support.wait_until(lambda: any("问题99" in c["body"]["markdown"]["content"] for c in http.records()),
                       message="the marker's call")
    texts = sorted(re.search(r"问题\d\d", c["body"]["markdown"]["content"]).group(0) for c in http.records())
    assert texts == [f"问题{n:02d}" for n in range(30)] + ["问题99"]  # every notice once, none twice
    made = second["api"].get("/notifications", params={"limit": 100}).json()
    assert len(made) == 31 and {n["attempts"] for n in made} == {1}


def test_a_child_coordination_request_reaches_this_office_once(notify_stack, rabbit_admin, vhost):
    """A child stack escalated a task here (tasks publishes coordination_requested): this office
    hears of it on every channel it registered, once, even when the broker redelivers."""
    api, amqp, smtp, http = notify_stack["api"], notify_stack["amqp_uri"], notify_stack["smtp"], notify_stack["http"]
    queue = "evt-tasks-coordination_requested--notify.on_coordination_requested"
    support.wait_until(lambda: rabbit_admin.queue(vhost, queue), message=f"queue {queue}")
    office = api.post("/contacts", {"owner_kind": "node", "owner_id": STREET, "node": STREET,
                                    "name": "金牛山街道创卫办", "inbox_user": "jns.cwb", "email": "cwb@jns.example.cn",
                                    "webhook_url": f"{notify_stack['bot']}/ok/jns", "webhook_format": "dingtalk"})
    assert office.status_code == 201, office.text
    child = TaskRef(
        task_id="task-c1", inspection_id="insp-c1", inspecting_node=COMMUNITY, owner_node=COMMUNITY,
        responsible=Responsible(subject_id="subj-wy", node=COMMUNITY, name="周家山小区物业"),
        item_code="PT-05", item_text="化粪池无渗漏", category_code="PT", category_name="公厕", severity="critical",
        deadline_at=datetime(2026, 11, 18, 18, tzinfo=CST), status="escalated")
    requested = make_event(CoordinationRequested(task=child, from_node=COMMUNITY, reason="化粪池产权不清，社区无法协调",
                                                 answer_due_at=datetime(2026, 11, 25, 18, tzinfo=CST),
                                                 requested_at=datetime(2026, 11, 22, 18, tzinfo=CST)),
                           TASKS, correlation_id="task-c1")
    duplicates_before = consumed(api, "coordination_requested", "duplicate")
    publish(amqp, "tasks", requested)

    [mail] = support.wait_until(lambda: smtp.records(), message="an e-mail to this office")
    [call] = support.wait_until(lambda: http.records(), message="a group-bot call")
    [notice] = inbox_items(api, "jns.cwb")
    assert notice["notice_type"] == "coordination" and notice["title"].startswith("协调请求：")
    for text in (COMMUNITY, "化粪池产权不清，社区无法协调", "2026年11月25日 18:00", "化粪池无渗漏", "周家山小区物业"):
        assert text in notice["body_markdown"]
    assert mail["to"] == ["cwb@jns.example.cn"]
    assert call["path"] == "/ok/jns" and "协调请求" in call["body"]["markdown"]["title"]

    publish(amqp, "tasks", requested)
    support.wait_until(lambda: consumed(api, "coordination_requested", "duplicate") == duplicates_before + 1,
                       message="the redelivery recognised as a duplicate")
    # The duplicate made no rows; a later request, sent on every channel, shows nothing went in between.
    publish(amqp, "tasks", make_event(CoordinationRequested(
        task=child.model_copy(update={"task_id": "task-c2", "item_text": "标记"}), from_node=COMMUNITY, reason="标记",
        answer_due_at=datetime(2026, 11, 25, 18, tzinfo=CST), requested_at=datetime(2026, 11, 22, 19, tzinfo=CST)),
        TASKS, correlation_id="task-c2"))
    support.wait_until(lambda: len(smtp.records()) == 2 and len(http.records()) == 2, message="the marker's sends")
    assert [c["path"] for c in http.records()] == ["/ok/jns", "/ok/jns"]
    assert "标记" in http.records()[1]["body"]["markdown"]["text"]  # dingtalk
    assert len(inbox_items(api, "jns.cwb")) == 2
    sent = api.get("/notifications", params={"event_id": str(requested.event_id)}).json()
    assert sorted(n["channel"] for n in sent) == ["email", "inbox", "webhook"]


def test_ranks_from_ranking_published_meet_figures_from_score_published_v2(notify_stack):
    """Issue 11: scoring publishes a subject's own figure (score_published v2, no rank) and its
    place apart (ranking_published); the score rules see both together, in either order, and
    an older ranking version arriving late changes nothing."""
    from services.contracts.events.scoring import RankChange, RankingPublished, ScorePublishedV2
    api, amqp = notify_stack["api"], notify_stack["amqp_uri"]
    assert api.post("/contacts", {"owner_kind": "subject", "owner_id": "subj-zjs", "node": COMMUNITY,
                                  "name": "张主任", "inbox_user": "zhang"}).status_code == 201
    assert api.post("/contacts", {"owner_kind": "subject", "owner_id": "subj-xt", "node": "411502008006",
                                  "name": "刘主任", "inbox_user": "liu"}).status_code == 201
    scoring = Producer(node=STREET, service="scoring")
    now = datetime.now(timezone.utc)

    def figure(subject_id, node, name, value, revision=1):
        return ScorePublishedV2(
            scoring_node=STREET, subject=ScoredSubject(subject_id=subject_id, node=node, name=name,
                                                       subject_type="child_unit"),
            period_kind="month", period="2026-11", score=value, scale=100, vetoed=False, inputs=4,
            policy=PolicyRef(policy_id="street", version=1), revision=revision, computed_at=now)

    def ranks(version, *changes, peers=8):
        return RankingPublished(
            scoring_node=STREET, period_kind="month", period="2026-11", tier="community", subject_type="child_unit",
            version=version, peers=peers, computed_at=now,
            changes=[RankChange(subject=ScoredSubject(subject_id=s, node=n, name=nm, subject_type="child_unit"),
                                rank=r, ranked=r is not None, movement=None) for s, n, nm, r in changes])

    zjs, xt = ("subj-zjs", COMMUNITY, "周家山社区"), ("subj-xt", "411502008006", "飨堂社区")
    rankings_before = consumed(api, "ranking_published", "processed")
    scores_before = consumed(api, "score_published", "processed")
    def titles(user):
        return sorted(n["title"].split("：")[0] for n in inbox_items(api, user))

    # 周家山: its figure first, then its place (1st of 8): commended. 飨堂: its place (last of
    # 8) comes before its figure: criticised at once.
    publish(amqp, "scoring", make_event(figure(*zjs, 96.0), scoring))
    publish(amqp, "scoring", make_event(ranks(2, (*zjs, 1), (*xt, 8)), scoring))
    support.wait_until(lambda: titles("zhang") == ["通报表扬"], message="the commendation")
    support.wait_until(lambda: titles("liu") == ["通报批评"], message="the criticism")
    # 飨堂's figure, then version 1 arriving late (it would make 飨堂 first): nothing new.
    publish(amqp, "scoring", make_event(figure(*xt, 61.0), scoring))
    publish(amqp, "scoring", make_event(ranks(1, (*xt, 1)), scoring))
    support.wait_until(lambda: consumed(api, "ranking_published", "processed") == rankings_before + 2
                       and consumed(api, "score_published", "processed") == scores_before + 2,
                       message="all four consumed")
    assert titles("liu") == ["通报批评"] and titles("zhang") == ["通报表扬"]
