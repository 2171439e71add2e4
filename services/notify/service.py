"""Notification service: notices, urge notices and bulletins — delivered, never lost, never doubled.

Entrypoints only: routing rules in `domain`, bulletin assembly in `bulletin`, rendering in
`templates`, use cases in `operations`, sending in `delivery`. (The operator-endpoints mixin is imported
as a module so that `nameko run services.notify.service` finds only this service class.)
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
from services.notify.schemas import (BulletinIn, BulletinOut, BulletinQuery, ContactIn, ContactOut, ContactQuery,
                                     DeadLetterOut, DeadLetterQuery, InboxAction, InboxQuery, NewsletterIn,
                                     NewsletterOut, NotificationOut, NotificationQuery, ReplayIn, RuleSetIn,
                                     RuleSetOut, TemplateIn, TemplateOut)
from services.notify.templates import TEMPLATE_NAMES, Templates
from services.plumbing import operator_endpoints
from services.plumbing.consumer import reliable_event_handler
from services.plumbing.db import Database
from services.plumbing.http import api
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


def _own_node(code: str, home: str) -> str:
    """A node whose rules or templates this stack may change: its home node or below."""
    node = _node(code)
    if not is_within(node, home):
        raise RuleViolation("node", f"node {node} is outside this stack's jurisdiction ({home})")
    return node


class NotifyService(operator_endpoints.OperatorEndpoints):
    name = "notify"

    db = Database(MIGRATIONS)
    identity = Identity()
    delivery = DeliveryWorker()

    def _ctx(self) -> ops.NotifyContext:
        return ops.NotifyContext(home=self.identity.home,
                                 templates=Templates(self.config.get("NOTIFY_TEMPLATE_DIR") or None),
                                 names=self.identity.name_of)

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

    @reliable_event_handler("scoring", "score_published")
    def on_score_published(self, body):
        return self._consume(body, "score_published", ops.apply_score_published)

    @reliable_event_handler("inspection", "inspection_submitted")
    def on_inspection_submitted(self, body):
        return self._consume(body, "inspection_submitted", ops.apply_inspection_submitted)

    # --- the schedule ---

    @ConfigurableTimer.decorator("NOTIFY_BULLETIN_CHECK_SECONDS", BULLETIN_CHECK_SECONDS)
    def scheduled_bulletin(self):
        if str(self.config.get("NOTIFY_BULLETIN_SCHEDULE", "true")).lower() == "false":
            return
        with self.db.transaction() as session:
            bulletin = ops.generate_due_bulletin(session, self._ctx(), int(self.config.get("NOTIFY_BULLETIN_DAY", 1)))
        if bulletin is not None:
            log.info("generated the %s bulletin for %s (%s)", bulletin.period, bulletin.node, bulletin.id)

    # --- contacts ---

    @api("POST", "/contacts", body=ContactIn, response=ContactOut, status=201,
         summary="登记联系人 Register a contact of a subject or an office (inbox user, e-mail, group-bot webhook)")
    def register_contact(self, request, body: ContactIn):
        with self.db.transaction() as session:
            return ops.register_contact(session, body)

    @api("PUT", "/contacts/<contact_id>", body=ContactIn, response=ContactOut,
         summary="修改联系人 Replace a contact")
    def replace_contact(self, request, contact_id, body: ContactIn):
        with self.db.transaction() as session:
            return ops.replace_contact(session, contact_id, body)

    @api("GET", "/contacts", query=ContactQuery, response=list[ContactOut], summary="联系人目录 The contacts directory")
    def list_contacts(self, request, query: ContactQuery):
        return ops.list_contacts(self.db.session, query)

    # --- routing rules ---

    @api("GET", "/rules/<node>", response=RuleSetOut,
         summary="通知规则 The routing rules in force for a node (its own, inherited, or the default)")
    def get_rules(self, request, node):
        return ops.effective_rules(self.db.session, _node(node))[1]

    @api("PUT", "/rules/<node>", body=RuleSetIn, response=RuleSetOut,
         summary="替换通知规则 Replace a node's routing rules (stored as a new version)")
    def replace_rules(self, request, node, body: RuleSetIn):
        with self.db.transaction() as session:
            return ops.replace_rules(session, _own_node(node, self.identity.home), body.document, body.author)

    @api("GET", "/rules/<node>/versions", response=list[RuleSetOut], summary="规则版本 Every stored version")
    def rule_versions(self, request, node):
        return ops.rule_versions(self.db.session, _node(node))

    # --- templates ---

    @api("GET", "/templates", summary="模板清单 The template names")
    def list_templates(self, request):
        return {"names": TEMPLATE_NAMES}

    @api("GET", "/templates/<node>/<name>", response=TemplateOut,
         summary="查看模板 The template in force for a node (database, directory or default)")
    def get_template(self, request, node, name):
        return ops.get_template(self.db.session, self._ctx(), _node(node), name)

    @api("PUT", "/templates/<node>/<name>", body=TemplateIn, response=TemplateOut,
         summary="覆盖模板 Store a node's own version of a template")
    def put_template(self, request, node, name, body: TemplateIn):
        with self.db.transaction() as session:
            return ops.put_template(session, _own_node(node, self.identity.home), name, body.source, body.author)

    @api("DELETE", "/templates/<node>/<name>", status=204, raw=True,
         summary="恢复默认模板 Remove a node's stored template")
    def delete_template(self, request, node, name):
        with self.db.transaction() as session:
            ops.delete_template(session, _own_node(node, self.identity.home), name)
        return Response(status=204)

    # --- inbox ---

    @api("GET", "/inbox", query=InboxQuery, response=list[NotificationOut], summary="站内信 A user's inbox")
    def list_inbox(self, request, query: InboxQuery):
        return ops.list_inbox(self.db.session, query)

    @api("POST", "/inbox/<notification_id>/read", body=InboxAction, response=NotificationOut,
         summary="阅读 Read an inbox notice (marks it read)")
    def read_inbox_item(self, request, notification_id, body: InboxAction):
        with self.db.transaction() as session:
            return ops.read_inbox_item(session, notification_id, body.user)

    @api("POST", "/inbox/<notification_id>/ack", body=InboxAction, response=NotificationOut,
         summary="签收 Acknowledge an inbox notice")
    def acknowledge_inbox_item(self, request, notification_id, body: InboxAction):
        with self.db.transaction() as session:
            return ops.acknowledge_inbox_item(session, notification_id, body.user)

    # --- operators: notifications and dead letters ---

    @api("GET", "/notifications", query=NotificationQuery, response=list[NotificationOut],
         summary="通知记录 Notifications with their delivery state")
    def list_notifications(self, request, query: NotificationQuery):
        return ops.list_notifications(self.db.session, query)

    @api("GET", "/dead-letters", query=DeadLetterQuery, response=list[DeadLetterOut],
         summary="投递失败清单 Deliveries that used up their attempts")
    def list_dead_letters(self, request, query: DeadLetterQuery):
        return ops.list_dead_letters(self.db.session, query)

    @api("POST", "/dead-letters/<dead_letter_id>/replay", body=ReplayIn, response=DeadLetterOut,
         summary="重新投递 Replay a dead delivery with a fresh set of attempts")
    def replay_dead_letter(self, request, dead_letter_id, body: ReplayIn):
        with self.db.transaction() as session:
            result = ops.replay_dead_letter(session, dead_letter_id, body.operator)
        metrics.REPLAYED.labels(result.channel).inc()
        self.delivery.nudge(result.channel)
        return result

    # --- bulletins and newsletters ---

    @api("POST", "/bulletins", body=BulletinIn, response=BulletinOut, status=201,
         summary="生成月度通报 Generate the monthly bulletin of a month (kept; a new revision each time)")
    def create_bulletin(self, request, body: BulletinIn):
        with self.db.transaction() as session:
            bulletin = ops.generate_bulletin(session, self._ctx(), body.period, "api", body.requested_by, body.notify)
            return ops.bulletin_out(bulletin, with_data=True)

    @api("GET", "/bulletins", query=BulletinQuery, response=list[BulletinOut], summary="月度通报清单 Kept bulletins")
    def list_bulletins(self, request, query: BulletinQuery):
        return ops.list_bulletins(self.db.session, self.identity.home, query.period, query.limit, query.offset)

    @api("GET", "/bulletins/<bulletin_id>", response=BulletinOut, summary="查看月度通报 A bulletin with its data")
    def get_bulletin(self, request, bulletin_id):
        return ops.bulletin_out(ops.get_bulletin(self.db.session, bulletin_id), with_data=True)

    @api("GET", "/bulletins/<bulletin_id>/html", raw=True, summary="下载通报 (HTML)")
    def bulletin_html(self, request, bulletin_id):
        b = ops.get_bulletin(self.db.session, bulletin_id)
        return Response(b.html, content_type="text/html; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="bulletin-{b.node}-{b.period}-r{b.revision}.html"'})

    @api("GET", "/bulletins/<bulletin_id>/markdown", raw=True, summary="下载通报 (Markdown)")
    def bulletin_markdown(self, request, bulletin_id):
        b = ops.get_bulletin(self.db.session, bulletin_id)
        return Response(b.markdown, content_type="text/markdown; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="bulletin-{b.node}-{b.period}-r{b.revision}.md"'})

    @api("GET", "/bulletins/<bulletin_id>/pdf", raw=True, summary="下载通报 (PDF)")
    def bulletin_pdf(self, request, bulletin_id):
        b = ops.get_bulletin(self.db.session, bulletin_id)
        office = self.identity.name_of(b.node) or b.data.get("node_name") or b.node
        body = render_bulletin_pdf(b.data, office, b.revision)
        name = pdf_filename(b.node, b.period, b.revision)
        return Response(body, content_type="application/pdf", headers={
            "Content-Disposition": f"attachment; filename=\"{name}\"; filename*=UTF-8''{quote(b.title + '.pdf')}"})

    @api("POST", "/newsletters", body=NewsletterIn, response=NewsletterOut, status=201,
         summary="发送创卫简报 Send a campaign newsletter by the newsletter rules")
    def send_newsletter(self, request, body: NewsletterIn):
        with self.db.transaction() as session:
            newsletter_id, count = ops.send_newsletter(session, self._ctx(), body)
        return NewsletterOut(newsletter_id=newsletter_id, notifications=count)
