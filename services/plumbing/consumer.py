"""A reliable event handler: dead-letters poison messages, requeues on transient faults.

nameko's own EventHandler acks a message whose handler raised, losing it. This one:
- acks after the handler's transaction committed;
- rejects without requeue (so RabbitMQ dead-letters it to `<service>.dead-letters`)
  when the message can never succeed (invalid envelope, a bug);
- requeues after a pause when the fault is transient (database or broker unreachable).
"""
from __future__ import annotations

import logging

import eventlet
from kombu import Exchange, Queue, Connection
from nameko.events import EventHandler
from sqlalchemy.exc import OperationalError, InterfaceError, DisconnectionError

from services.contracts.events import InvalidEvent
from services.plumbing import metrics
from services.plumbing.idempotency import DUPLICATE  # noqa: F401  (re-exported for handlers)

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (OperationalError, InterfaceError, DisconnectionError, ConnectionError, TimeoutError)
TRANSIENT_RETRY_PAUSE = 2.0


def dead_letter_exchange_name(service_name: str) -> str:
    return f"{service_name}.dlx"


def dead_letter_queue_name(service_name: str) -> str:
    return f"{service_name}.dead-letters"


def declare_dead_letter_route(amqp_uri: str, service_name: str) -> None:
    dlx = Exchange(dead_letter_exchange_name(service_name), type="topic", durable=True)
    dlq = Queue(dead_letter_queue_name(service_name), exchange=dlx, routing_key="#", durable=True)
    with Connection(amqp_uri) as conn:
        dlq(conn.default_channel).declare()


class ReliableEventHandler(EventHandler):
    """@reliable_event_handler(source_service, event_type[, exchange=..., routing_key=...])

    By default it binds like nameko's handler (exchange `<source>.events`, key = event
    type). `exchange`/`routing_key` bind it elsewhere, e.g. to the tier exchanges
    (`chuangwei.children`, `score_published.#`); `routing_key` may be a function of the
    container config (a child binds to its own subtree).
    """

    def __init__(self, source_service, event_type, exchange: str | None = None,
                 routing_key: str | None = None, **kwargs):
        self.exchange_override = exchange
        self.routing_key_override = routing_key
        super().__init__(source_service, event_type, **kwargs)

    def setup(self):
        super().setup()
        service_name = self.container.service_name
        declare_dead_letter_route(self.container.config["AMQP_URI"], service_name)
        queue = self.queue
        exchange = queue.exchange
        if self.exchange_override:
            exchange = Exchange(self.exchange_override, type="topic", durable=True)
        routing_key = self.routing_key_override or queue.routing_key
        if callable(routing_key):  # computed from the stack's config, e.g. its subtree
            routing_key = routing_key(self.container.config)
        self.queue = Queue(
            queue.name, exchange=exchange, routing_key=routing_key,
            durable=True, auto_delete=False, exclusive=False,
            queue_arguments={"x-dead-letter-exchange": dead_letter_exchange_name(service_name)},
        )

    def handle_message_processed(self, message, result=None, exc_info=None):
        service = self.container.service_name
        if exc_info is None:
            outcome = "duplicate" if result == DUPLICATE else "processed"
            metrics.EVENTS_CONSUMED.labels(service, self.event_type, outcome).inc()
            self.queue_consumer.ack_message(message)
            return
        exc = exc_info[1]
        if isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, InvalidEvent):
            log.warning("%s.%s: transient failure, requeueing: %s", service, self.method_name, exc)
            metrics.EVENTS_CONSUMED.labels(service, self.event_type, "requeued").inc()
            eventlet.sleep(TRANSIENT_RETRY_PAUSE)
            self.queue_consumer.requeue_message(message)
            return
        log.error("%s.%s: dead-lettering message: %r", service, self.method_name, exc)
        metrics.EVENTS_CONSUMED.labels(service, self.event_type, "dead_lettered").inc()
        if message.channel.connection:
            message.reject(requeue=False)


reliable_event_handler = ReliableEventHandler.decorator
