"""Quorum queues on a three-node RabbitMQ cluster of the test's own (issue 12): with
QUEUE_TYPE=quorum every durable queue is replicated, so events published before a node is
killed are still delivered — through another node — and applied once each.

The three nodes run on this machine under a temporary directory (own node names, ports,
mnesia and log directories, one shared Erlang cookie); the shared broker is not touched."""
from __future__ import annotations

import secrets

import pytest
from sqlalchemy import create_engine

from tests import support
from tests.integration import test_reliable_consumer as probe
from tests.nodes import RabbitNode

# Own broker node(s) to boot, services to start and faults to sit out: beyond the usual 300 s.
pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

QUEUE = probe.QUEUE


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("quorum-cluster")
    cookie = secrets.token_hex(16)
    nodes = [RabbitNode(base / name, f"chuangwei-quorum-{name}", cookie=cookie) for name in "abc"]
    try:
        for node in nodes:  # boot all three at once: each takes a while on a small machine
            node.start(wait=False)
        for node in nodes:
            node.wait_ready()
        for node in nodes[1:]:
            node.join(nodes[0])
        yield nodes
    finally:
        for node in nodes:
            node.kill()


def queue_line(node: RabbitNode, queue: str) -> list[str]:
    out = node.ctl("list_queues", "-q", "--no-table-headers", "name", "type", "arguments", "members")
    return next(line for line in out.splitlines() if line.startswith(queue))


def test_events_survive_the_loss_of_a_node_on_quorum_queues(cluster, database_url, monkeypatch):
    monkeypatch.setattr("services.plumbing.consumer.TRANSIENT_RETRY_PAUSE", 0.1)
    a, b, c = cluster
    assert all(node.nodename in a.ctl("cluster_status") for node in cluster)
    engine = create_engine(database_url)
    probe.metadata.create_all(engine)
    engine.dispose()

    config = dict(support.base_config(a.amqp_uri, database_url, QUEUE_TYPE="quorum", EVENT_MAX_DELIVERIES=4))
    with support.running_services(config, probe.ProbeService):
        pass  # declares its quorum queue (replicated on all three nodes) and goes away

    line = queue_line(b, QUEUE)
    assert "quorum" in line and "x-delivery-limit" in line and "x-dead-letter-exchange" in line, line
    assert all(node.nodename in line for node in cluster), line
    dead_letters = queue_line(b, "probe.dead-letters")
    assert "quorum" in dead_letters, dead_letters

    events = [dict(probe.SAMPLE, event_id=f"11111111-2222-4333-8444-{n:012d}") for n in range(20)]
    for event in events:
        probe.publish(a.amqp_uri, event)
    probe.publish(a.amqp_uri, events[3])  # a duplicate, as after a relay crash
    a.kill()  # the node the events were published through, without a goodbye

    # Every node's address, the dead one first: kombu fails over to the next.
    config["AMQP_URI"] = ";".join(node.amqp_uri for node in cluster)
    with support.running_services(config, probe.ProbeService):
        support.wait_until(lambda: probe.applied_count(database_url) == 20, timeout=60,
                           message="every event applied through another node")
        probe.publish(c.amqp_uri, dict(probe.SAMPLE, event_id="11111111-2222-4333-8444-999999999999"))
        support.wait_until(lambda: probe.applied_count(database_url) == 21, timeout=30,
                           message="a later marker applied")
    assert probe.applied_count(database_url) == 21
