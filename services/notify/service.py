"""Notification service: notices, urge notices and bulletins — delivered, never lost, never doubled.

Entrypoints only: routing rules in `domain`, bulletin assembly in `bulletin`, rendering in
`templates`, use cases in `operations`, sending in `delivery`. (The operator-endpoints mixin is imported
as a module so that `nameko run services.notify.service` finds only this service class.)

Who may do what (node-level checks in `operations`): contacts, rules, templates, newsletters,
bulletin production and dead letters are for administrators of the owning node (or above);
rules, templates, notifications and bulletins are read within the caller's subtrees; the
inbox is the caller's own: the notices whose `inbox_user` is the caller's account (token
subject). Who did it (rule and template authors, who asked for a bulletin, replayed a dead
letter, acknowledged a notice) is always the signed-in caller.
"""
from __future__ import annotations

import logging
from pathlib import Path

from urllib.parse import quote

from werkzeug.wrappers import Response

from services.contracts.errors import RuleViolation
from services.contracts.nodes import InvalidNodeCode, is_within, normalize_code
from services.notify import metrics
from services.notify import operations as ops
from services.notify.delivery import DeliveryWorker
from services.notify.models import processed_events
from services.notify.pdf import pdf_filename, render_bulletin_pdf
from services.notify.schemas import (ArchiveQuery, BoardOut, BulletinIn, BulletinOut, BulletinQuery, ContactIn,
                                     ContactOut, ContactQuery, DeadLetterOut, DeadLetterQuery, InboxQuery, NewsletterIn,
                                     NewsletterOut, NotificationOut, NotificationQuery, RuleSetIn, RuleSetOut,
                                     TemplateIn, TemplateOut)
from services.notify.templates import TEMPLATE_NAMES, Templates
from services.notify.webhooks import WebhookPolicy
from services.plumbing import operator_endpoints
from services.plumbing.auth import ADMINISTRATOR, PUBLIC, signed_in
from services.plumbing.consumer import reliable_event_handler
from services.plumbing.db import Database
from services.plumbing.http import ApiError, api
from services.plumbing.idempotency import apply_once
from services.plumbing.providers import Identity
from services.plumbing.timers import ConfigurableTimer

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# The timer (NOTIFY_BULLETIN_CHECK_SECONDS; 0 turns it off) only checks whether last month's
# bulletin is due; the work is locked and idempotent.
BULLETIN_CHECK_SECONDS = 300


def _node(code: str) -> str:
    try:
        return normalize_code(code)
    except InvalidNodeCode as exc:
        raise RuleViolation("node", str(exc)) from None


# Node-level checks happen in the use cases, where the node is known.
ADMIN = signed_in(ADMINISTRATOR)
ANYONE = signed_in()


class NotifyService(operator_endpoints.OperatorEndpoints):
    name = "notify"

    db = Database(MIGRATIONS)
    identity = Identity()
    delivery = DeliveryWorker()

    @property
    def _webhooks(self) -> WebhookPolicy:
        return WebhookPolicy.from_config(self.config)

    def _ctx(self) -> ops.NotifyContext:
        return ops.NotifyContext(home=self.identity.home,
                                 templates=Templates(self.config.get("NOTIFY_TEMPLATE_DIR") or None),
                                 names=self.identity.name_of, webhooks=self._webhooks)

    def _own_node(self, code: str, principal) -> str:
        """A node whose rules or templates this stack may change (its home node or below), for
        its administrators only."""
        node = _node(code)
        principal.require(ADMINISTRATOR, node, "node")
        home = self.identity.home
        if not is_within(node, home):
            raise RuleViolation("node", f"node {node} is outside this stack's jurisdiction ({home})")
        return node

    # --- consuming events (never rename these: each names a durable queue) ---

    def _consume(self, body, event_type: str, apply):
        def applied(session, envelope, payload):
            apply(session, self._ctx(), envelope, payload)
            return "processed"
        return apply_once(self.db, processed_events, body, event_type, f"notify.on_{event_type}", applied)

    @reliable_event_handler("tasks", "task_opened")
    def on_task_opened(self, body):
        return self._consume(body, "task_opened", ops.apply_task_event)

    @reliable_event_handler("tasks", "task_overdue")
    def on_task_overdue(self, body):
        return self._consume(body, "task_overdue", ops.apply_task_event)

    @reliable_event_handler("tasks", "task_escalated")
    def on_task_escalated(self, body):
        return self._consume(body, "task_escalated", ops.apply_task_event)

    @reliable_event_handler("tasks", "task_closed")
    def on_task_closed(self, body):
        return self._consume(body, "task_closed", ops.apply_task_event)

    @reliable_event_handler("tasks", "task_status_changed")
    def on_task_status_changed(self, body):
        return self._consume(body, "task_status_changed", ops.apply_task_event)

    @reliable_event_handler("tasks", "task_relapsed")
    def on_task_relapsed(self, body):
        return self._consume(body, "task_relapsed", ops.apply_task_event)

    @reliable_event_handler("tasks", "coordination_requested")
    def on_coordination_requested(self, body):
        return self._consume(body, "coordination_requested", ops.apply_coordination_requested)

    @reliable_event_handler("indicators", "vector_verdict_published")
    def on_vector_verdict_published(self, body):
        return self._consume(body, "vector_verdict_published", ops.apply_indicator)

    @reliable_event_handler("indicators", "satisfaction_published")
    def on_satisfaction_published(self, body):
        return self._consume(body, "satisfaction_published", ops.apply_indicator)

    @reliable_event_handler("scoring", "score_published")
    def on_score_published(self, body):
        return self._consume(body, "score_published", ops.apply_score_published)

    @reliable_event_handler("scoring", "ranking_published")
    def on_ranking_published(self, body):
        return self._consume(body, "ranking_published", ops.apply_ranking_published)

    @reliable_event_handler("scoring", "child_freshness_changed")
    def on_child_freshness_changed(self, body):
        return self._consume(body, "child_freshness_changed", ops.apply_child_freshness_changed)

    @reliable_event_handler("inspection", "inspection_submitted")
    def on_inspection_submitted(self, body):
        return self._consume(body, "inspection_submitted", ops.apply_inspection_submitted)

    @reliable_event_handler("inspection", "inspection_released")
    def on_inspection_released(self, body):
        return self._consume(body, "inspection_released", ops.apply_inspection_released)

    @reliable_event_handler("inspection", "check_missed")
    def on_check_missed(self, body):
        return self._consume(body, "check_missed", ops.apply_check_missed)

    # --- the schedule ---

    @ConfigurableTimer.decorator("NOTIFY_BULLETIN_CHECK_SECONDS", BULLETIN_CHECK_SECONDS)
    def scheduled_bulletin(self):
        if str(self.config.get("NOTIFY_BULLETIN_SCHEDULE", "true")).lower() == "false":
            return
        with self.db.transaction() as session:
            bulletin = ops.generate_due_bulletin(session, self._ctx(), int(self.config.get("NOTIFY_BULLETIN_DAY", 1)))
        if bulletin is not None:
            metrics.BULLETIN_MISSING.set(0)
            log.info("generated the %s bulletin for %s (%s)", bulletin.period, bulletin.node, bulletin.id)

    # --- contacts ---

    @api("POST", "/contacts", body=ContactIn, response=ContactOut, status=201, access=ADMIN,
         summary="登记联系人 Register a contact of a subject or an office (inbox user, e-mail, group-bot webhook)")
    def register_contact(self, request, body: ContactIn, principal):
        with self.db.transaction() as session:
            return ops.register_contact(session, body, principal, self._webhooks)

    @api("PUT", "/contacts/<contact_id>", body=ContactIn, response=ContactOut, access=ADMIN,
         summary="修改联系人 Replace a contact")
    def replace_contact(self, request, contact_id, body: ContactIn, principal):
        with self.db.transaction() as session:
            return ops.replace_contact(session, contact_id, body, principal, self._webhooks)

    @api("GET", "/contacts", query=ContactQuery, response=list[ContactOut], access=ADMIN,
         summary="联系人目录 The contacts directory (of the nodes the caller administers)")
    def list_contacts(self, request, query: ContactQuery, principal):
        return ops.list_contacts(self.db.session, query, principal)

    # --- routing rules ---

    @api("GET", "/rules/<node>", response=RuleSetOut, access=ANYONE,
         summary="通知规则 The routing rules in force for a node (its own, inherited, or the default)")
    def get_rules(self, request, node, principal):
        return ops.get_rules(self.db.session, _node(node), principal)

    @api("PUT", "/rules/<node>", body=RuleSetIn, response=RuleSetOut, access=ADMIN,
         summary="替换通知规则 Replace a node's routing rules (stored as a new version)")
    def replace_rules(self, request, node, body: RuleSetIn, principal):
        with self.db.transaction() as session:
            return ops.replace_rules(session, self._own_node(node, principal), body.document, principal)

    @api("GET", "/rules/<node>/versions", response=list[RuleSetOut], access=ANYONE,
         summary="规则版本 Every stored version")
    def rule_versions(self, request, node, principal):
        return ops.rule_versions(self.db.session, _node(node), principal)

    # --- templates ---

    @api("GET", "/templates", access=ANYONE, summary="模板清单 The template names")
    def list_templates(self, request, principal):
        return {"names": TEMPLATE_NAMES}

    @api("GET", "/templates/<node>/<name>", response=TemplateOut, access=ANYONE,
         summary="查看模板 The template in force for a node (database, directory or default)")
    def get_template(self, request, node, name, principal):
        return ops.get_template(self.db.session, self._ctx(), _node(node), name, principal)

    @api("PUT", "/templates/<node>/<name>", body=TemplateIn, response=TemplateOut, access=ADMIN,
         summary="覆盖模板 Store a node's own version of a template (test-rendered first; refused if it fails)")
    def put_template(self, request, node, name, body: TemplateIn, principal):
        with self.db.transaction() as session:
            return ops.put_template(session, self._ctx(), self._own_node(node, principal), name, body.source,
                                    principal)

    @api("DELETE", "/templates/<node>/<name>", status=204, raw=True, access=ADMIN,
         summary="恢复默认模板 Remove a node's stored template")
    def delete_template(self, request, node, name, principal):
        with self.db.transaction() as session:
            ops.delete_template(session, self._own_node(node, principal), name, principal)
        return Response(status=204)

    # --- inbox: the caller's own (notices addressed to its account) ---

    @api("GET", "/inbox", query=InboxQuery, response=list[NotificationOut], access=ANYONE,
         summary="站内信 The signed-in user's inbox")
    def list_inbox(self, request, query: InboxQuery, principal):
        return ops.list_inbox(self.db.session, query, principal)

    @api("POST", "/inbox/<notification_id>/read", response=NotificationOut, access=ANYONE,
         summary="阅读 Read a notice of one's own inbox (marks it read)")
    def read_inbox_item(self, request, notification_id, principal):
        with self.db.transaction() as session:
            return ops.read_inbox_item(session, notification_id, principal)

    @api("POST", "/inbox/<notification_id>/ack", response=NotificationOut, access=ANYONE,
         summary="签收 Acknowledge a notice of one's own inbox")
    def acknowledge_inbox_item(self, request, notification_id, principal):
        with self.db.transaction() as session:
            return ops.acknowledge_inbox_item(session, notification_id, principal)

    # --- operators: notifications and dead letters ---

    @api("GET", "/notifications", query=NotificationQuery, response=list[NotificationOut], access=ANYONE,
         summary="通知记录 Notifications with their delivery state (within the caller's subtrees)")
    def list_notifications(self, request, query: NotificationQuery, principal):
        return ops.list_notifications(self.db.session, query, principal)

    @api("GET", "/dead-letters", query=DeadLetterQuery, response=list[DeadLetterOut], access=ADMIN,
         summary="投递失败清单 Deliveries that used up their attempts (of the nodes the caller administers)")
    def list_dead_letters(self, request, query: DeadLetterQuery, principal):
        return ops.list_dead_letters(self.db.session, query, principal)

    @api("POST", "/dead-letters/<dead_letter_id>/replay", response=DeadLetterOut, access=ADMIN,
         summary="重新投递 Replay a dead delivery with a fresh set of attempts")
    def replay_dead_letter(self, request, dead_letter_id, principal):
        with self.db.transaction() as session:
            result = ops.replay_dead_letter(session, dead_letter_id, principal)
        metrics.REPLAYED.labels(result.channel).inc()
        self.delivery.nudge(result.channel)
        return result

    # --- bulletins and newsletters ---

    @api("POST", "/bulletins", body=BulletinIn, response=BulletinOut, status=201, access=ADMIN,
         summary="生成月度通报 Generate the monthly bulletin of a month (kept; a new revision each time)")
    def create_bulletin(self, request, body: BulletinIn, principal):
        with self.db.transaction() as session:
            bulletin = ops.request_bulletin(session, self._ctx(), body.period, principal, body.notify)
            return ops.bulletin_out(bulletin, with_data=True)

    @api("GET", "/bulletins", query=BulletinQuery, response=list[BulletinOut], access=ANYONE,
         summary="月度通报清单 Kept bulletins")
    def list_bulletins(self, request, query: BulletinQuery, principal):
        return ops.list_bulletins(self.db.session, self.identity.home, query.period, query.limit, query.offset,
                                  principal)

    @api("GET", "/bulletins/<bulletin_id>", response=BulletinOut, access=ANYONE,
         summary="查看月度通报 A bulletin with its data")
    def get_bulletin(self, request, bulletin_id, principal):
        return ops.bulletin_out(ops.get_bulletin(self.db.session, bulletin_id, principal), with_data=True)

    @api("GET", "/bulletins/<bulletin_id>/html", raw=True, access=ANYONE, content_type="text/html",
         summary="下载通报 (HTML)")
    def bulletin_html(self, request, bulletin_id, principal):
        b = ops.get_bulletin(self.db.session, bulletin_id, principal)
        return Response(b.html, content_type="text/html; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="bulletin-{b.node}-{b.period}-r{b.revision}.html"'})

    @api("GET", "/bulletins/<bulletin_id>/markdown", raw=True, access=ANYONE, content_type="text/markdown",
         summary="下载通报 (Markdown)")
    def bulletin_markdown(self, request, bulletin_id, principal):
        b = ops.get_bulletin(self.db.session, bulletin_id, principal)
        return Response(b.markdown, content_type="text/markdown; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="bulletin-{b.node}-{b.period}-r{b.revision}.md"'})

    @api("GET", "/bulletins/<bulletin_id>/pdf", raw=True, access=ANYONE, content_type="application/pdf",
         summary="下载通报 (PDF)")
    def bulletin_pdf(self, request, bulletin_id, principal):
        b = ops.get_bulletin(self.db.session, bulletin_id, principal)
        office = self.identity.name_of(b.node) or b.data.get("node_name") or b.node
        body = render_bulletin_pdf(b.data, office, b.revision)
        name = pdf_filename(b.node, b.period, b.revision)
        return Response(body, content_type="application/pdf", headers={
            "Content-Disposition": f"attachment; filename=\"{name}\"; filename*=UTF-8''{quote(b.title + '.pdf')}"})

    @api("GET", "/board", response=BoardOut, access=PUBLIC,
         summary="公开榜单 The office's released monthly ranking with 红榜/黑榜, for anyone (张榜公布)",
         description="Only what the latest issued monthly bulletin published: ranks, names, scores, grades, "
                     "movement, the red and black lists. No inspector, note, task or 暗访 detail. 404 until a "
                     "bulletin has been issued.")
    def public_board(self, request):
        home = self.identity.home
        board = ops.public_board(self.db.session, home, self.identity.name_of(home) or home)
        if board is None:
            raise ApiError("no ranking has been released yet (尚未发布榜单)", status=404, code="not_found")
        return board

    @api("GET", "/archive", query=ArchiveQuery, raw=True, access=ADMIN, content_type="application/zip",
         summary="创卫档案 The review archive of a span and content area (zip, ready to print)",
         description="The office's administrators. Index, inspections, tasks and close-outs with photo "
                     "references, rankings, each month's bulletin as PDF, and a completeness report (weeks "
                     "without an inspection, tasks closed without close-out evidence, tasks still open).")
    def archive(self, request, query: ArchiveQuery, principal):
        body, _ = ops.review_archive(self.db.session, self._ctx(), principal, query.since, query.until, query.area)
        name = f"archive-{self.identity.home}-{query.since}-{query.until}-{query.area or 'all'}.zip"
        return Response(body, content_type="application/zip",
                        headers={"Content-Disposition": f"attachment; filename=\"{name}\""})

    @api("POST", "/newsletters", body=NewsletterIn, response=NewsletterOut, status=201, access=ADMIN,
         summary="发送创卫简报 Send a campaign newsletter by the newsletter rules")
    def send_newsletter(self, request, body: NewsletterIn, principal):
        with self.db.transaction() as session:
            newsletter_id, count = ops.send_newsletter(session, self._ctx(), body, principal)
        return NewsletterOut(newsletter_id=newsletter_id, notifications=count)
