"""A reliable event handler: dead-letters poison messages, retries transient faults.

nameko's own EventHandler acks a message whose handler raised, losing it, and kombu acks
(drops) a message it cannot decode. This one:
- acks after the handler's transaction committed;
- rejects without requeue (so RabbitMQ dead-letters it to `<service>.dead-letters`)
  when the message can never succeed (invalid envelope, a bug);
- dead-letters a message it cannot decode (not UTF-8, not JSON, another content type)
  with the reason, instead of kombu's default of acking it away;
- retries a transient fault (database or broker unreachable) with exponential backoff up
  to EVENT_MAX_DELIVERIES deliveries, then dead-letters it with the reason.

Messages this module dead-letters itself (rather than by a broker-side reject) carry the
headers DEAD_REASON_HEADER and DEAD_QUEUE_HEADER: why, and the queue to replay them to.

Who published an event: RabbitMQ refuses a message whose `user_id` property differs from
the user of the connection that publishes it, so `user_id` names the publisher's broker
user and cannot be forged. With EVENT_PRODUCERS configured (producing service → broker
user), an event on `<source>.events` is applied only if its `user_id` is its producer's.
A copy this service republishes itself (a retry, a dead letter, a replay run with the
service's own credentials) carries its own `user_id` and the original publisher's user in
PRODUCER_USER_HEADER, which is believed only on a message whose `user_id` is this service's.
"""
from __future__ import annotations

import logging
import time

from functools import partial

import eventlet
from kombu import Exchange, Queue, Connection
from nameko.events import EventHandler
from nameko.exceptions import ContainerBeingKilled
from nameko.messaging import QueueConsumer
from prometheus_client import Gauge
from sqlalchemy.exc import OperationalError, InterfaceError, DisconnectionError, TimeoutError as PoolTimeout

from services.contracts.events import InvalidEvent
from services.contracts.nodes import InvalidNodeCode, is_within, normalize_code
from services.contracts.tiers import CHILDREN_EXCHANGE, PARENT_EXCHANGE
from services.plumbing import metrics
from services.plumbing.config import broker_user, database_url, event_producers, home_node, service_amqp_uri
from services.plumbing.db import quiet_outage_tracebacks
from services.plumbing.idempotency import DUPLICATE  # noqa: F401  (re-exported for handlers)

log = logging.getLogger(__name__)

# Beside metrics.EVENTS_CONSUMED, whose outcomes here add: undecodable, retried (a transient
# failure, delivered again after a pause), retries_exhausted (dead-lettered after the limit).
EVENT_MAX_DELIVERIES = Gauge(
    "chuangwei_event_max_deliveries", "Deliveries of one event before a transient failure is dead-lettered",
    ["service"])

# PoolTimeout: no pooled connection came free in time (a busy database), worth a retry as well.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout, ConnectionError, TimeoutError)
TRANSIENT_RETRY_PAUSE = 2.0
"""First pause before a transient failure is retried; doubled at each further delivery."""
TRANSIENT_RETRY_MAX_PAUSE = 120.0
"""Longest pause between two deliveries (config EVENT_RETRY_MAX_PAUSE)."""
DEFAULT_MAX_DELIVERIES = 10
"""Deliveries of one message before a transient failure is dead-lettered (config
EVENT_MAX_DELIVERIES): with the default pauses about 8 minutes of retrying."""

DEAD_REASON_HEADER = "x-chuangwei-dead-reason"
DEAD_QUEUE_HEADER = "x-chuangwei-dead-queue"
DELIVERIES_HEADER = "x-chuangwei-deliveries"
"""How many times this message was delivered before (our republish-with-header count)."""
PRODUCER_USER_HEADER = "chuangwei-producer-user"
"""On a message a service republished itself: the broker user who first published it ("" if
the original carried no user_id)."""


def publishing_user(message, own_user: str) -> str | None:
    """The broker user who published `message` (RabbitMQ validated its `user_id`), seen
    through this service's own republished copies (retries, dead letters, replays)."""
    user = (message.properties or {}).get("user_id")
    headers = message.headers or {}
    if user is not None and user == own_user and PRODUCER_USER_HEADER in headers:
        return headers[PRODUCER_USER_HEADER] or None  # "": the original carried no user_id
    return user


def dead_letter_exchange_name(service_name: str) -> str:
    return f"{service_name}.dlx"


def dead_letter_queue_name(service_name: str) -> str:
    return f"{service_name}.dead-letters"


QUORUM = "quorum"


def durable_queue_arguments(config: dict, delivery_limit: int | None = None) -> dict:
    """Arguments every durable queue of ours is declared with.

    QUEUE_TYPE=quorum (a RabbitMQ cluster: replicated on a majority of nodes) declares them
    as quorum queues, which count deliveries themselves: `x-delivery-limit` makes the
    broker dead-letter a message delivered that often without an ack (a consumer crashing
    on it again and again), which our own count cannot see. Classic (the default) suits a
    single node. A queue keeps its type: switching needs the queues drained and deleted
    (infra/README.md)."""
    queue_type = str(config.get("QUEUE_TYPE") or "classic").lower()
    if queue_type == "classic":
        return {}
    if queue_type != QUORUM:
        raise RuntimeError(f"QUEUE_TYPE must be classic or quorum, not {queue_type!r}")
    arguments = {"x-queue-type": QUORUM}
    if delivery_limit is not None:
        arguments["x-delivery-limit"] = delivery_limit
    return arguments


def dead_letter_queue(service_name: str, config: dict | None = None) -> Queue:
    dlx = Exchange(dead_letter_exchange_name(service_name), type="topic", durable=True)
    return Queue(dead_letter_queue_name(service_name), exchange=dlx, routing_key="#", durable=True,
                 queue_arguments=durable_queue_arguments(config or {}) or None)


def declare_dead_letter_route(amqp_uri: str, service_name: str, config: dict | None = None) -> None:
    with Connection(amqp_uri) as conn:
        dead_letter_queue(service_name, config)(conn.default_channel).declare()


def _republish(amqp_uri: str, message, exchange: str, routing_key: str, headers: dict) -> None:
    """Publish a copy of `message` as received (raw body, same properties) with publisher
    confirms; raises if the broker did not take it, so the caller keeps the original.

    The copy is published as this connection's user (the only `user_id` the broker lets it
    set); who published the original travels in PRODUCER_USER_HEADER."""
    properties = message.properties or {}
    own_user = broker_user(amqp_uri)
    headers = dict(headers)
    headers.pop(PRODUCER_USER_HEADER, None)
    headers[PRODUCER_USER_HEADER] = publishing_user(message, own_user) or ""
    with Connection(amqp_uri, transport_options={"confirm_publish": True}, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=2)
        conn.Producer().publish(
            message.body, exchange=exchange, routing_key=routing_key, headers=headers,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary", delivery_mode=2,
            message_id=properties.get("message_id"), type=properties.get("type"),
            correlation_id=properties.get("correlation_id"), user_id=own_user)


def dead_letter(amqp_uri: str, service_name: str, queue_name: str, message, reason: str) -> None:
    """Move `message` to the service's dead-letter queue with `reason`; never drops it.

    A copy goes to `<service>.dlx` (routing key: the queue it came from) carrying the reason
    and the origin queue, then the original is acked. If the copy cannot be published, the
    original is rejected so that the broker dead-letters it itself (without the reason).
    """
    headers = {k: v for k, v in (message.headers or {}).items() if k != DELIVERIES_HEADER}
    headers.update({DEAD_REASON_HEADER: reason[:1000], DEAD_QUEUE_HEADER: queue_name})
    try:
        _republish(amqp_uri, message, dead_letter_exchange_name(service_name), queue_name, headers)
    except Exception as exc:  # the broker will still dead-letter it through the queue's DLX
        log.warning("%s: could not publish a dead letter with its reason (%s); rejecting it", service_name, exc)
        if message.channel.connection:
            message.reject(requeue=False)
        return
    if message.channel.connection:
        message.ack()


class ReliableQueueConsumer(QueueConsumer):
    """nameko's QueueConsumer, but a message that cannot be decoded is dead-lettered with the
    reason (kombu's ConsumerMixin default acks it: lost without a trace); it connects as the
    service's own broker user (AMQP_URIS) when one is configured, and its prefetch is large
    enough to fill a batching handler's batches."""

    @property
    def amqp_uri(self):
        return service_amqp_uri(self.container.config, self.container.service_name)

    @property
    def prefetch_count(self):
        # RabbitMQ applies the last basic.qos of the channel to all its consumers: one
        # figure for all, the largest batch any handler of this container wants.
        batches = [getattr(p, "batch_size", 0) for p in self._providers]
        return max([self.container.max_workers] + batches)

    def get_consumers(self, consumer_cls, channel):
        # The dead-letter route is declared on each (re)connection, before the queues that
        # dead-letter into it, rather than at setup: a service whose broker is not up yet
        # starts anyway and declares everything once the broker answers (nameko's consumer
        # keeps reconnecting with backoff).
        for service_name in {provider.container.service_name for provider in self._providers}:
            dead_letter_queue(service_name, self.container.config)(channel).declare()
        return super().get_consumers(consumer_cls, channel)

    def on_decode_error(self, message, exc):
        tag = (message.delivery_info or {}).get("consumer_tag")
        for provider, consumer in list(self._consumers.items()):
            if tag in getattr(consumer, "_active_tags", {}).values():
                self.container.spawn_managed_thread(
                    lambda: provider.handle_undecodable(message, exc), identifier="dead_letter_undecodable")
                return
        # No consumer of ours owns it (cannot happen while consuming): let the broker keep it.
        log.error("undecodable message on an unknown consumer %r: rejecting (%r)", tag, exc)
        message.reject(requeue=False)


class ReliableEventHandler(EventHandler):
    """@reliable_event_handler(source_service, event_type[, exchange=..., routing_key=...])

    By default it binds like nameko's handler (exchange `<source>.events`, key = event
    type). `exchange`/`routing_key` bind it elsewhere, e.g. to the tier exchanges
    (`chuangwei.children`, `score_published.#`); `routing_key` may be a function of the
    container config (a child binds to its own subtree).
    """

    queue_consumer = ReliableQueueConsumer()

    def __init__(self, source_service, event_type, exchange: str | None = None,
                 routing_key: str | None = None, **kwargs):
        self.exchange_override = exchange
        self.routing_key_override = routing_key
        super().__init__(source_service, event_type, **kwargs)

    def setup(self):
        super().setup()
        quiet_outage_tracebacks()
        service_name = self.container.service_name
        config = self.container.config
        self.amqp_uri = service_amqp_uri(config, service_name)
        self.own_user = broker_user(self.amqp_uri)
        self.producer_user = None  # not checked: the tier exchanges are fed by federation links
        producers = event_producers(config)
        if producers and self.exchange_override is None:
            if self.source_service not in producers:
                raise RuntimeError(f"EVENT_PRODUCERS names no broker user for {self.source_service}, "
                                   f"whose events {service_name}.{self.method_name} consumes")
            self.producer_user = producers[self.source_service]
        self.max_deliveries = max(1, int(config.get("EVENT_MAX_DELIVERIES", DEFAULT_MAX_DELIVERIES)))
        self.max_pause = float(config.get("EVENT_RETRY_MAX_PAUSE", TRANSIENT_RETRY_MAX_PAUSE))
        EVENT_MAX_DELIVERIES.labels(service_name).set(self.max_deliveries)
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
            queue_arguments={"x-dead-letter-exchange": dead_letter_exchange_name(service_name),
                             **durable_queue_arguments(config, delivery_limit=self.max_deliveries)},
        )

    def accepted_producer(self, body, message=None) -> str | None:
        """Why an event may not come from where it says it comes from, or None.

        Each binding has one legitimate sender: the stack's own service on its local
        exchange, a node strictly below this stack on `chuangwei.children` (federated from
        the child links), a node strictly above it on `chuangwei.parent`. On the local
        exchange, with EVENT_PRODUCERS configured, the broker user who published it must be
        the producing service's. An event that claims another origin — misrouted, or
        injected by a client with write access to the vhost — is dead-lettered, never applied.
        """
        if self.producer_user is not None:
            if message is None:  # fail closed: a caller that cannot show the message proves nothing
                return "no message to read the publisher's broker user from"
            user = publishing_user(message, self.own_user)
            if user != self.producer_user:
                return (f"published by broker user {user!r}, not by {self.source_service}'s "
                        f"{self.producer_user!r}")
        producer = body.get("producer") if isinstance(body, dict) else None
        if not isinstance(producer, dict):
            return "the event names no producer"
        try:
            node = normalize_code(str(producer.get("node")))
        except InvalidNodeCode:
            return f"producer node {producer.get('node')!r} is not a division code"
        home = home_node(self.container.config)
        exchange = self.exchange_override
        if exchange == CHILDREN_EXCHANGE:
            if node == home or not is_within(node, home):
                return f"{node} is not below this stack's node {home}"
        elif exchange == PARENT_EXCHANGE:
            if node == home or not is_within(home, node):
                return f"{node} is not above this stack's node {home}"
        elif exchange is None:
            if node != home or producer.get("service") != self.source_service:
                return (f"{producer.get('service')}@{node} is not this stack's {self.source_service} "
                        f"service ({home})")
        return None

    def handle_undecodable(self, message, exc):
        service = self.container.service_name
        reason = (f"undecodable message (content type {message.content_type!r}, "
                  f"encoding {message.content_encoding!r}): {exc.__class__.__name__}: {exc}")
        log.error("%s.%s: dead-lettering %s", service, self.method_name, reason)
        metrics.EVENTS_CONSUMED.labels(service, self.event_type, "undecodable").inc()
        dead_letter(self.amqp_uri, service, self.queue.name, message, reason)

    def refused(self, body, message) -> bool:
        """Dead-letter an event from an unexpected producer, with the reason; True if it was."""
        refused = self.accepted_producer(body, message)
        if refused is None:
            return False
        service = self.container.service_name
        log.error("%s.%s: dead-lettering an event from an unexpected producer: %s",
                  service, self.method_name, refused)
        metrics.EVENTS_CONSUMED.labels(service, self.event_type, "refused_producer").inc()
        reason = f"refused producer: {refused}"
        self.container.spawn_managed_thread(
            lambda: dead_letter(self.amqp_uri, service, self.queue.name, message, reason),
            identifier="dead_letter_refused_producer")
        return True

    def handle_message(self, body, message):
        if self.refused(body, message):
            return
        super().handle_message(body, message)

    def handle_message_processed(self, message, result=None, exc_info=None):
        service = self.container.service_name
        if exc_info is None:
            outcome = "duplicate" if result == DUPLICATE else "processed"
            metrics.EVENTS_CONSUMED.labels(service, self.event_type, outcome).inc()
            self.queue_consumer.ack_message(message)
            return
        exc = exc_info[1]
        if isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, InvalidEvent):
            self._retry_or_give_up(message, exc)
            return
        log.error("%s.%s: dead-lettering message: %r", service, self.method_name, exc)
        metrics.EVENTS_CONSUMED.labels(service, self.event_type, "dead_lettered").inc()
        if message.channel.connection:
            message.reject(requeue=False)


    def deliveries(self, message) -> int:
        """How many times this message has been delivered, this time included."""
        headers = message.headers or {}
        counted = headers.get(DELIVERIES_HEADER)
        count = int(counted) + 1 if isinstance(counted, int) else 1
        # A quorum queue counts redeliveries itself (crashes, requeues): trust the larger.
        broker_count = headers.get("x-delivery-count")
        if isinstance(broker_count, int):
            count = max(count, broker_count + 1)
        return count

    def _retry_or_give_up(self, message, exc):
        service = self.container.service_name
        delivery = self.deliveries(message)
        if delivery >= self.max_deliveries:
            reason = (f"transient failure on each of {delivery} deliveries "
                      f"(EVENT_MAX_DELIVERIES={self.max_deliveries}); last: {exc.__class__.__name__}: {exc}")
            log.error("%s.%s: dead-lettering: %s", service, self.method_name, reason)
            metrics.EVENTS_CONSUMED.labels(service, self.event_type, "retries_exhausted").inc()
            dead_letter(self.amqp_uri, service, self.queue.name, message, reason)
            return
        pause = min(TRANSIENT_RETRY_PAUSE * 2 ** (delivery - 1), self.max_pause)
        # One line per failure, no traceback: an outage would otherwise flood the log.
        log.warning("%s.%s: transient failure (delivery %d of %d), retrying in %.1f s: %s",
                    service, self.method_name, delivery, self.max_deliveries, pause,
                    str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
        metrics.EVENTS_CONSUMED.labels(service, self.event_type, "retried").inc()
        eventlet.sleep(pause)
        # Back to the end of its own queue with the count raised, then ack this delivery
        # (a crash in between delivers it twice, which idempotent consumers absorb).
        headers = dict(message.headers or {}, **{DELIVERIES_HEADER: delivery})
        try:
            _republish(self.amqp_uri, message, "", self.queue.name, headers)
        except Exception as publish_exc:  # broker unreachable too: the plain requeue keeps it
            log.warning("%s.%s: could not republish for a retry (%s); requeueing",
                        service, self.method_name, publish_exc)
            self.queue_consumer.requeue_message(message)
            return
        self.queue_consumer.ack_message(message)


reliable_event_handler = ReliableEventHandler.decorator


DEFAULT_BATCH_SIZE = 100
"""Most events one batch of a batching handler applies (config EVENT_BATCH_SIZE)."""
EMBEDDED_BATCH_LINGER = 3.0
"""Seconds a batch waits for more events on the embedded database (EVENT_BATCH_LINGER unset):
there every writer of the stack waits for a batch's transaction, and a batch costs nearly the
same for one event as for ten (its re-ranking), so a steady trickle is applied every three
seconds instead of event by event (benchmarks/embedded.py: a submission's p99 1.5 s with 1 s,
0.5 s with 3 s). On PostgreSQL (rows locked, not the database) the default is 0."""


def batch_linger(config: dict, service_name: str) -> float:
    """EVENT_BATCH_LINGER seconds if set; else 3 s on SQLite, 0 elsewhere."""
    value = config.get("EVENT_BATCH_LINGER")
    if value not in (None, ""):
        return max(0.0, float(value))
    return EMBEDDED_BATCH_LINGER if database_url(config, service_name).startswith("sqlite") else 0.0


class BatchingEventHandler(ReliableEventHandler):
    """@batching_event_handler(source_service, event_type, ...): like the reliable handler,
    but the method receives a *list* of message bodies and applies them in one transaction
    (see `idempotency.apply_batch_once`), so a burst costs one lock, one re-ranking and one
    commit instead of one per event.

    One batch is in flight per handler at a time; what arrives meanwhile (up to the
    prefetch) waits and forms the next batch, so a trickle is handled one event at a time
    without any added delay and a burst in batches of up to EVENT_BATCH_SIZE. With a linger
    (`batch_linger`: the embedded database's default) a batch smaller than that starts only
    once its oldest event has waited EVENT_BATCH_LINGER seconds. All messages
    of a batch are acked after its commit. A batch that fails is split: each of its
    messages is retried alone, where a poison message is dead-lettered and a transient
    failure retried exactly as by the reliable handler, without holding back the others.
    """

    def setup(self):
        super().setup()
        config = self.container.config
        self.batch_size = max(1, int(config.get("EVENT_BATCH_SIZE", DEFAULT_BATCH_SIZE)))
        self.linger = batch_linger(config, self.container.service_name)
        self._waiting: list = []
        self._waiting_since = 0.0  # when the oldest waiting message arrived (monotonic)
        self._linger_call = None
        self._alone: list = []  # messages of a failed batch, each to be tried on its own
        self._in_flight = False

    def handle_message(self, body, message):
        if self.refused(body, message):
            return
        if not self._waiting:
            self._waiting_since = time.monotonic()
        self._waiting.append((body, message))
        self._dispatch()

    def _lingering(self) -> bool:
        """Whether the waiting events wait a little longer for others to join their batch."""
        if self.linger <= 0 or len(self._waiting) >= self.batch_size:
            return False
        left = self._waiting_since + self.linger - time.monotonic()
        if left <= 0:
            return False
        if self._linger_call is None:
            self._linger_call = eventlet.spawn_after(left, self._linger_over)
        return True

    def _linger_over(self):
        self._linger_call = None
        self._dispatch()

    def stop(self):
        # Events still lingering are unacked: the broker gives them back when we disconnect.
        if self._linger_call is not None:
            self._linger_call.cancel()
            self._linger_call = None
        super().stop()

    def _dispatch(self):
        if self._in_flight:
            return
        if self._alone:
            batch = [self._alone.pop(0)]
        elif self._waiting:
            if self._lingering():
                return
            batch, self._waiting = self._waiting[:self.batch_size], self._waiting[self.batch_size:]
            self._waiting_since = time.monotonic() - self.linger  # what is left has waited already
        else:
            return
        self._in_flight = True
        try:
            self.container.spawn_worker(
                self, ([body for body, _ in batch],), {},
                context_data=self.unpack_message_headers(batch[0][1]),
                handle_result=partial(self.handle_batch_result, batch))
        except ContainerBeingKilled:
            self._in_flight = False
            for _, message in batch:
                self.queue_consumer.requeue_message(message)

    def handle_batch_result(self, batch, worker_ctx, result=None, exc_info=None):
        try:
            if exc_info is None:
                service = self.container.service_name
                outcomes = result if isinstance(result, list) and len(result) == len(batch) else [None] * len(batch)
                for (_, message), outcome in zip(batch, outcomes):
                    label = "duplicate" if outcome == DUPLICATE else "processed"
                    metrics.EVENTS_CONSUMED.labels(service, self.event_type, label).inc()
                    self.queue_consumer.ack_message(message)
            elif len(batch) > 1:
                log.warning("%s.%s: a batch of %d failed (%r); trying each event alone",
                            self.container.service_name, self.method_name, len(batch), exc_info[1])
                self._alone.extend(batch)
            else:
                [(_, message)] = batch
                self.handle_message_processed(message, result, exc_info)
        finally:
            self._in_flight = False
            self._dispatch()
        return result, exc_info


batching_event_handler = BatchingEventHandler.decorator
