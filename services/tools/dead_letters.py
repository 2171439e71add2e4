"""List or replay the messages a service dead-lettered (poison messages, handler bugs).

    python -m services.tools.dead_letters list   --service scoring
    python -m services.tools.dead_letters replay --service scoring [--event-id ID]

Replay sends each message back to the queue it died in (from its x-death header), so it
is handled again once the cause is fixed; idempotent consumers make a replay safe. Where
producers are checked by broker user (EVENT_PRODUCERS), replay with the consuming service's
own broker credentials (`--amqp-uri`): its consumers believe the original publisher named
in a copy only when the copy comes from their own user.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from kombu import Connection

from services.plumbing.config import broker_user
from services.plumbing.consumer import (DEAD_QUEUE_HEADER, DEAD_REASON_HEADER, PRODUCER_USER_HEADER,
                                        dead_letter_queue_name, publishing_user)


def _origin_queue(message) -> str | None:
    headers = message.headers or {}
    deaths = headers.get("x-death") or []
    # Dead-lettered by the consumer itself (undecodable, retries exhausted): its own header.
    return deaths[0].get("queue") if deaths else headers.get(DEAD_QUEUE_HEADER)


def _body(message):
    """The JSON body, or for a message that is not JSON at all, its raw text (so listing
    never fails on the undecodable messages that are dead-lettered for that very reason)."""
    try:
        return json.loads(message.body)
    except (ValueError, TypeError):
        raw = message.body
        return {"undecodable": raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)}


def count_dead_letters(amqp_uri: str, service: str) -> int:
    """How many messages wait in the service's dead-letter queue (none fetched)."""
    with Connection(amqp_uri, connect_timeout=5) as conn:
        return conn.default_channel.queue_declare(dead_letter_queue_name(service), passive=True).message_count


def _until_returned(channel, queue: str, held: int, timeout: float = 10.0) -> None:
    """Wait (bounded) until the broker counts the peeked messages as ready again.

    A quorum queue applies a requeue through its replicated log, after basic.reject has
    returned: a peek that follows at once could see only the part already applied, and a
    caller polling the list would never see it whole."""
    deadline = time.monotonic() + timeout
    while channel.queue_declare(queue, passive=True).message_count < held and time.monotonic() < deadline:
        time.sleep(0.05)


def list_dead_letters(amqp_uri: str, service: str, limit: int | None = None) -> list[dict]:
    """Peek without consuming: every message (the first `limit`) is fetched, recorded and
    returned to the queue."""
    out, held = [], []
    with Connection(amqp_uri, connect_timeout=5) as conn:
        channel = conn.channel()
        while limit is None or len(held) < limit:
            message = channel.basic_get(dead_letter_queue_name(service), no_ack=False)
            if message is None:
                break
            held.append(message)
            body = _body(message)
            headers = message.headers or {}
            deaths = headers.get("x-death") or [{}]
            out.append({"event_id": body.get("event_id") if isinstance(body, dict) else None,
                        "event_type": body.get("event_type") if isinstance(body, dict) else None,
                        "queue": _origin_queue(message),
                        "reason": headers.get(DEAD_REASON_HEADER) or deaths[0].get("reason"),
                        "count": deaths[0].get("count"),
                        "published_by": (headers[PRODUCER_USER_HEADER] or None) if PRODUCER_USER_HEADER in headers
                        else message.properties.get("user_id"),
                        "body": body})
        for message in held:
            channel.basic_reject(message.delivery_tag, requeue=True)
        if held:
            _until_returned(channel, dead_letter_queue_name(service), len(held))
        channel.close()
    return out


def replay_dead_letters(amqp_uri: str, service: str, event_id: str | None = None) -> int:
    replayed = 0
    own_user = broker_user(amqp_uri)
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        producer = conn.Producer(channel=channel)
        skipped = []
        # Only the messages there now: one replayed into a handler that still fails comes
        # back to the tail of this queue while we work, and must not be replayed again (a
        # fast consumer would make that a loop without end).
        waiting = channel.queue_declare(dead_letter_queue_name(service), passive=True).message_count
        for _ in range(waiting):
            message = channel.basic_get(dead_letter_queue_name(service), no_ack=False)
            if message is None:
                break
            body = _body(message)
            queue = _origin_queue(message)
            if queue is None or (event_id and (not isinstance(body, dict) or body.get("event_id") != event_id)):
                skipped.append(message)
                continue
            headers = {k: v for k, v in (message.headers or {}).items()
                       if not k.startswith("x-") and k != PRODUCER_USER_HEADER}
            headers[PRODUCER_USER_HEADER] = publishing_user(message, own_user) or ""
            # As received (raw bytes and content type): a replay is the same message again.
            producer.publish(message.body, exchange="", routing_key=queue, headers=headers, delivery_mode=2,
                             user_id=own_user,
                             content_type=message.properties.get("content_type") or "application/octet-stream",
                             content_encoding=message.properties.get("content_encoding") or "binary")
            channel.basic_ack(message.delivery_tag)
            replayed += 1
        for message in skipped:
            channel.basic_reject(message.delivery_tag, requeue=True)
        channel.close()
    return replayed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["list", "replay"])
    parser.add_argument("--service", required=True)
    parser.add_argument("--event-id")
    parser.add_argument("--amqp-uri", default=os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"))
    args = parser.parse_args(argv)
    if args.action == "list":
        for item in list_dead_letters(args.amqp_uri, args.service):
            print(json.dumps(item, ensure_ascii=False, default=str))
    else:
        print(f"replayed {replay_dead_letters(args.amqp_uri, args.service, args.event_id)} message(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
