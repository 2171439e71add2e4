"""Print the events published on a stack's bus, one JSON document a line.

    python -m services.tools.tail_events --exchange inspection.events [--key '#'] [--count N]

A separate process with its own queue: what any other consumer of the events sees.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import uuid

from kombu import Connection, Exchange, Queue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-uri", default=os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--exchange", action="append", required=True, help="e.g. inspection.events (repeatable)")
    parser.add_argument("--key", default="#", help="routing key pattern (event type), default all")
    parser.add_argument("--count", type=int, default=0, help="exit after N events (0 = run until stopped)")
    parser.add_argument("--timeout", type=float, default=0, help="give up after this many idle seconds")
    args = parser.parse_args(argv)

    seen = 0
    with Connection(args.amqp_uri) as conn:
        channel = conn.channel()
        name = f"tail-events-{uuid.uuid4().hex[:8]}"
        for exchange_name in args.exchange:
            exchange = Exchange(exchange_name, type="topic", durable=True)
            exchange(channel).declare()
            Queue(name, exchange=exchange, routing_key=args.key, exclusive=True)(channel).declare()
        print(json.dumps({"ready": True, "queue": name}), flush=True)

        def on_message(body, message):
            nonlocal seen
            print(json.dumps(body, ensure_ascii=False), flush=True)
            message.ack()
            seen += 1

        with conn.Consumer(Queue(name, channel=channel, no_declare=True), callbacks=[on_message],
                           accept=["json"]):
            while not args.count or seen < args.count:
                try:
                    conn.drain_events(timeout=args.timeout or None)
                except socket.timeout:
                    print(json.dumps({"timeout": True, "seen": seen}), flush=True)
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
