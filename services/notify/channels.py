"""Senders for the external channels: e-mail over SMTP and chat-bot webhooks.

Plain blocking calls with their own timeouts (green under eventlet); no nameko, no
database. A sender returns normally on success and raises DeliveryFailed otherwise.
"""
from __future__ import annotations

import json
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import requests

from services.notify.domain import webhook_accepted, webhook_payload
from services.notify.sandbox import one_line
from services.notify.webhooks import WebhookPolicy, guarded_session


class DeliveryFailed(Exception):
    pass


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "chuangwei@localhost"
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout: float = 10.0

    @classmethod
    def from_config(cls, config: dict) -> "SmtpSettings":
        return cls(host=str(config.get("SMTP_HOST") or "127.0.0.1"), port=int(config.get("SMTP_PORT") or 25),
                   sender=str(config.get("SMTP_FROM") or "chuangwei@localhost"),
                   username=config.get("SMTP_USER") or None, password=config.get("SMTP_PASSWORD") or None,
                   starttls=str(config.get("SMTP_STARTTLS", "false")).lower() == "true",
                   timeout=float(config.get("SMTP_TIMEOUT") or 10.0))


def build_email(settings: SmtpSettings, to: str, title: str, text: str, html: str,
                message_id: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    # No header injection: a title made from names never carries a line break into a header.
    msg["Subject"] = one_line(title, 500) or "创卫通知"
    msg["From"] = settings.sender
    msg["To"] = to
    msg["Date"] = formatdate(localtime=False)
    # A stable Message-ID lets a mail client fold the duplicates of a retried send.
    msg["Message-ID"] = f"<{message_id}@chuangwei>" if message_id else make_msgid(domain="chuangwei")
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg


def send_email(settings: SmtpSettings, to: str, title: str, text: str, html: str,
               message_id: str | None = None) -> None:
    msg = build_email(settings, to, title, text, html, message_id)
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout) as smtp:
            if settings.starttls:
                smtp.starttls()
            if settings.username:
                smtp.login(settings.username, settings.password or "")
            # The envelope goes to the one stored address, whatever the headers say.
            refused = smtp.send_message(msg, to_addrs=[to])
    except (smtplib.SMTPException, OSError, ValueError) as exc:
        raise DeliveryFailed(f"SMTP {settings.host}:{settings.port}: {exc.__class__.__name__}: {exc}") from exc
    if refused:
        raise DeliveryFailed(f"SMTP refused recipients: {refused}")


def send_webhook(url: str, fmt: str, title: str, markdown: str, timeout: float = 10.0,
                 policy: WebhookPolicy | None = None) -> None:
    """POST to a bot, only where the policy allows (checked again now: the allowlist or DNS may
    have changed since the contact was stored), never following a redirect."""
    policy = policy or WebhookPolicy()
    problem = policy.url_problem(url, resolve=False)
    if problem:
        raise DeliveryFailed(f"webhook refused: {problem}")
    payload = webhook_payload(fmt, one_line(title, 500), markdown)
    try:
        with guarded_session(policy) as session:
            response = session.post(url, json=payload, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise DeliveryFailed(f"webhook: {exc.__class__.__name__}: {exc}") from exc
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    ok, reason = webhook_accepted(response.status_code, body)
    if not ok:
        raise DeliveryFailed(f"webhook: {reason}")
