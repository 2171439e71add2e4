"""Tier links over RabbitMQ's federation plugin, on the local broker (a vhost per tier)."""
from __future__ import annotations

import json
import uuid

import pytest
from kombu import Connection, Exchange, Queue

from services.contracts.tiers import (CHILDREN_EXCHANGE, DOWN_EXCHANGE, PARENT_EXCHANGE, UP_EXCHANGE,
                                      routing_key, subtree_binding)
from services.tools import federation
from tests import support

pytestmark = pytest.mark.integration


@pytest.fixture
def chain(infrastructure):
    run = uuid.uuid4().hex[:6]
    api = infrastructure["rabbit_api"]
    amqp = infrastructure["amqp_uri"]
    host = amqp.split("@", 1)[1].split("/", 1)[0]
    config = federation.TierConfig(management_api=api, amqp_host=host, tiers=[
        {"node": "411500000000", "vhost": f"t{run}-city"},
        {"node": "411502000000", "vhost": f"t{run}-shihe", "parent": "411500000000"},
        {"node": "411503000000", "vhost": f"t{run}-pingqiao", "parent": "411500000000"},
    ])
    federation.wire(config)
    support.wait_until(lambda: len([l for l in federation.link_status(config) if l["status"] == "running"]) == 4,
                       timeout=30, message="four running links")
    yield config
    federation.unwire(config)


def declare_sink(config, node, exchange, binding):
    tier = config.tier(node)
    name = f"sink-{uuid.uuid4().hex[:6]}"
    with Connection(config.amqp_uri(tier)) as conn:
        Queue(name, exchange=Exchange(exchange, type="topic", durable=True), routing_key=binding,
              durable=True)(conn.default_channel).declare()
    return name


def publish(config, node, exchange, key, body):
    with Connection(config.amqp_uri(config.tier(node))) as conn:
        conn.Producer().publish(body, exchange=Exchange(exchange, type="topic", durable=True), routing_key=key,
                                serializer="json", delivery_mode=2)


def drain(config, node, queue):
    out = []
    with Connection(config.amqp_uri(config.tier(node))) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            out.append(json.loads(message.body))
    return out


def collect(config, node, queue, count, timeout=20):
    got = []

    def enough():
        got.extend(drain(config, node, queue))
        return len(got) >= count
    try:
        support.wait_until(enough, timeout=timeout, message=f"{count} messages on {node}")
    except AssertionError as exc:  # say what did arrive, and what the links were doing
        raise AssertionError(f"{exc}; got {got}; links: {federation.link_status(config)}") from None
    return got


def test_upward_facts_reach_the_parent_and_downward_facts_only_the_addressed_child(chain):
    city_sink = declare_sink(chain, "411500000000", CHILDREN_EXCHANGE, "score_published.#")
    shihe_sink = declare_sink(chain, "411502000000", PARENT_EXCHANGE, subtree_binding("411502000000"))
    pingqiao_sink = declare_sink(chain, "411503000000", PARENT_EXCHANGE, subtree_binding("411503000000"))
    # Binding propagation to the upstream takes a moment.
    support.wait_until(lambda: _bound_upstream(chain), timeout=15, message="bindings propagated")

    publish(chain, "411502000000", UP_EXCHANGE, routing_key("score_published", "411502000000"), {"n": 1})
    assert collect(chain, "411500000000", city_sink, 1) == [{"n": 1}]

    publish(chain, "411500000000", DOWN_EXCHANGE, routing_key("task_assigned", "411502008001"), {"task": "A"})
    # A marker for the other child, after it on the same exchange: its link would have carried
    # "A" first, had it been bound to it.
    publish(chain, "411500000000", DOWN_EXCHANGE, routing_key("task_assigned", "411503001001"), {"task": "marker"})
    assert collect(chain, "411502000000", shihe_sink, 1) == [{"task": "A"}]
    assert collect(chain, "411503000000", pingqiao_sink, 1) == [{"task": "marker"}]
    assert drain(chain, "411502000000", shihe_sink) == []


def _bound_upstream(config):
    api = config.api_of(config.tier("411500000000"))
    bindings = api.get(f"/exchanges/{config.tier('411500000000').vhost}/{DOWN_EXCHANGE}/bindings/source") or []
    return len(bindings) >= 2


def test_events_published_while_a_link_is_down_arrive_once_when_it_is_back(chain):
    city_sink = declare_sink(chain, "411500000000", CHILDREN_EXCHANGE, "score_published.#")
    federation.set_upward_link(chain, "411502000000", enabled=False)
    support.wait_until(lambda: any(l["upstream"] == "child-411502000000" and l["status"] != "running"
                                   for l in federation.link_status(chain)), timeout=20, message="link down")
    for n in range(5):
        publish(chain, "411502000000", UP_EXCHANGE, routing_key("score_published", "411502000000"), {"n": n})
    # All five are held in the link's queue on the child's broker, with nobody taking them.
    support.wait_until(lambda: _link_queue(chain, "411502000000") == (5, 0), timeout=30,
                       message="five messages waiting in the cut link's queue")
    assert drain(chain, "411500000000", city_sink) == []
    federation.set_upward_link(chain, "411502000000", enabled=True)
    got = collect(chain, "411500000000", city_sink, 5, timeout=40)
    assert sorted(m["n"] for m in got) == [0, 1, 2, 3, 4]
    # A marker sent after them, over the same link: a second copy of any would come before it.
    publish(chain, "411502000000", UP_EXCHANGE, routing_key("score_published", "411502000000"), {"n": "marker"})
    assert collect(chain, "411500000000", city_sink, 1) == [{"n": "marker"}]


def _link_queue(config, node) -> tuple[int, int] | None:
    """(messages ready, consumers) of the upward link's queue on `node`'s broker."""
    tier = config.tier(node)
    queues = [q for q in config.api_of(tier).get(f"/queues/{tier.vhost}") or []
              if q["name"].startswith("federation: ")]
    if len(queues) != 1 or "messages_ready" not in queues[0]:
        return None
    return queues[0]["messages_ready"], queues[0].get("consumers", 0)


def test_link_users_have_least_privilege(chain):
    child = chain.tier("411502000000")
    api = chain.api_of(child)
    perms = api.get(f"/permissions/{child.vhost}/{federation.up_user(child)}")
    assert perms["read"] == "^(chuangwei\\.up|federation: .*)$"
    assert perms["configure"] == "^federation: .*"
    upstream = api.get(f"/parameters/federation-upstream/{chain.tier('411500000000').vhost}/child-411502000000")
    assert upstream["value"]["max-hops"] == 1 and upstream["value"]["ack-mode"] == "on-confirm"
    assert federation.up_user(child) in upstream["value"]["uri"]


def test_link_exporter_reports_every_link_and_a_cut_one_as_down(chain):
    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry()
    registry.register(federation.LinkCollector(chain))

    def exported():
        text = generate_latest(registry).decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("chuangwei_federation_link_up{")}
    shihe_up = 'chuangwei_federation_link_up{direction="up",peer="411502000000",tier="411500000000"}'
    assert exported() == {
        shihe_up: 1.0,
        'chuangwei_federation_link_up{direction="down",peer="411500000000",tier="411502000000"}': 1.0,
        'chuangwei_federation_link_up{direction="up",peer="411503000000",tier="411500000000"}': 1.0,
        'chuangwei_federation_link_up{direction="down",peer="411500000000",tier="411503000000"}': 1.0,
    }
    federation.set_upward_link(chain, "411502000000", enabled=False)
    try:
        support.wait_until(lambda: exported()[shihe_up] == 0.0, timeout=30, message="the cut link reported down")
        assert sum(exported().values()) == 3.0
    finally:
        federation.set_upward_link(chain, "411502000000", enabled=True)
    support.wait_until(lambda: exported()[shihe_up] == 1.0, timeout=60, message="the restored link reported up")
