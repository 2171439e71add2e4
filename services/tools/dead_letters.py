"""List or replay the messages a service dead-lettered (poison messages, handler bugs).

    python -m services.tools.dead_letters list   --service scoring
    python -m services.tools.dead_letters replay --service scoring [--event-id ID]

Replay sends each message back to the queue it died in (from its x-death header), so it
is handled again once the cause is fixed; idempotent consumers make a replay safe.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from kombu import Connection

from services.plumbing.consumer import dead_letter_queue_name


def _origin_queue(message) -> str | None:
    deaths = (message.headers or {}).get("x-death") or []
    return deaths[0].get("queue") if deaths else None


def list_dead_letters(amqp_uri: str, service: str) -> list[dict]:
    """Peek without consuming: every message is fetched, recorded and returned to the queue."""
    out, held = [], []
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        while True:
            message = channel.basic_get(dead_letter_queue_name(service), no_ack=False)
            if message is None:
                break
            held.append(message)
            body = json.loads(message.body)
            deaths = (message.headers or {}).get("x-death") or [{}]
            out.append({"event_id": body.get("event_id") if isinstance(body, dict) else None,
                        "event_type": body.get("event_type") if isinstance(body, dict) else None,
                        "queue": _origin_queue(message), "reason": deaths[0].get("reason"),
                        "count": deaths[0].get("count"), "body": body})
        for message in held:
            channel.basic_reject(message.delivery_tag, requeue=True)
        channel.close()
    return out


def replay_dead_letters(amqp_uri: str, service: str, event_id: str | None = None) -> int:
    replayed = 0
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        producer = conn.Producer(channel=channel)
        skipped = []
        while True:
            message = channel.basic_get(dead_letter_queue_name(service), no_ack=False)
            if message is None:
                break
            body = json.loads(message.body)
            queue = _origin_queue(message)
            if queue is None or (event_id and (not isinstance(body, dict) or body.get("event_id") != event_id)):
                skipped.append(message)
                continue
            headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-")}
            producer.publish(body, exchange="", routing_key=queue, serializer="json", headers=headers,
                             delivery_mode=2)
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
