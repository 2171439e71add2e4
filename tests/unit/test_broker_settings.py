"""Broker settings read from the stack's config (issue 12): per-service users, the producer
map, queue types."""
from __future__ import annotations

import pytest

from services.plumbing.config import broker_user, event_producers, service_amqp_uri
from services.plumbing.consumer import durable_queue_arguments


def test_a_service_connects_as_its_own_user_when_one_is_configured():
    config = {"AMQP_URI": "amqp://guest:guest@rabbit:5672/street",
              "AMQP_URIS": {"scoring": "amqp://chuangwei-scoring:s3cret@rabbit:5672/street", "tasks": ""}}
    assert service_amqp_uri(config, "scoring") == "amqp://chuangwei-scoring:s3cret@rabbit:5672/street"
    assert service_amqp_uri(config, "tasks") == config["AMQP_URI"]       # empty: the stack's URI
    assert service_amqp_uri(config, "notify") == config["AMQP_URI"]
    assert broker_user("amqp://chuangwei-scoring:s3cret@rabbit:5672/street") == "chuangwei-scoring"
    assert broker_user("amqp://user%40office:pw@rabbit/") == "user@office"
    assert broker_user("amqp://rabbit:5672/") == "guest"                 # kombu's default


def test_producers_are_checked_only_for_the_users_named():
    assert event_producers({}) == {}
    assert event_producers({"EVENT_PRODUCERS": {"inspection": None, "scoring": ""}}) == {}
    assert event_producers({"EVENT_PRODUCERS": {"inspection": "chuangwei-inspection", "tasks": None}}) == {
        "inspection": "chuangwei-inspection"}


def test_quorum_queues_carry_the_delivery_limit_and_classic_ones_nothing():
    assert durable_queue_arguments({}) == {}
    assert durable_queue_arguments({"QUEUE_TYPE": "classic"}, delivery_limit=10) == {}
    assert durable_queue_arguments({"QUEUE_TYPE": "quorum"}, delivery_limit=10) == {
        "x-queue-type": "quorum", "x-delivery-limit": 10}
    assert durable_queue_arguments({"QUEUE_TYPE": "Quorum"}) == {"x-queue-type": "quorum"}
    with pytest.raises(RuntimeError, match="QUEUE_TYPE must be classic or quorum, not 'stream'"):
        durable_queue_arguments({"QUEUE_TYPE": "stream"})
