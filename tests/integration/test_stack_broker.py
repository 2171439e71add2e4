"""`chuangwei-stack` on a machine without a broker running (issue 25): it starts a RabbitMQ node
of its own under var/rabbitmq when AMQP_URI is this machine's and nothing listens there, and
otherwise stops at once with a sentence saying what to do — it never hangs."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.tools import broker
from tests import support

ROOT = Path(__file__).resolve().parents[2]


def test_a_local_uri_with_nothing_listening_gets_a_node_of_the_stacks_own(tmp_path):
    port = support.free_port()
    uri = f"amqp://guest:guest@127.0.0.1:{port}/"
    assert not broker.listening(uri)
    node = broker.LocalNode(tmp_path / "rabbitmq", port)
    try:
        broker.ensure_broker(uri, tmp_path / "rabbitmq")
        assert broker.answers(uri) is None
        assert node.pid() is not None
        assert (tmp_path / "rabbitmq" / "mnesia").is_dir() and (tmp_path / "rabbitmq" / "log").is_dir()
        broker.ensure_broker(uri, tmp_path / "rabbitmq")  # already there: used as it is
    finally:
        assert node.stop()
    assert not broker.listening(uri)


def test_a_remote_broker_that_does_not_answer_stops_the_command_at_once_with_a_sentence():
    began = time.monotonic()
    with pytest.raises(broker.BrokerUnavailable) as stopped:
        # TEST-NET-1 (RFC 5737): never routed, so the connect times out rather than refusing.
        broker.ensure_broker("amqp://guest:guest@192.0.2.1:5672/", Path("/nonexistent"))
    assert time.monotonic() - began < 10
    assert "连接不上消息队列 192.0.2.1:5672" in str(stopped.value.code)


def test_wrong_credentials_are_named_instead_of_starting_another_broker(tmp_path):
    uri = support.DEFAULT_AMQP_URI.replace("guest:guest@", "guest:wrong-password@")
    with pytest.raises(broker.BrokerUnavailable) as stopped:
        broker.ensure_broker(uri, tmp_path / "rabbitmq")
    assert "拒绝了连接" in str(stopped.value.code) and "用户名、密码" in str(stopped.value.code)
    assert not (tmp_path / "rabbitmq").exists()


def test_without_rabbitmq_installed_the_command_says_to_run_setup(tmp_path, monkeypatch):
    monkeypatch.setattr(broker, "RABBIT_BIN", tmp_path / "none")
    monkeypatch.setenv("PATH", str(tmp_path))
    port = support.free_port()
    with pytest.raises(broker.BrokerUnavailable) as stopped:
        broker.ensure_broker(f"amqp://guest:guest@127.0.0.1:{port}/", tmp_path / "rabbitmq")
    assert "./setup.sh" in str(stopped.value.code)


def test_the_stack_command_prints_the_sentence_and_exits_non_zero_without_a_traceback(tmp_path):
    env = dict(os.environ, AMQP_URI="amqp://guest:guest@192.0.2.1:5672/", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "services.tools.stack"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "连接不上消息队列" in done.stderr and "Traceback" not in done.stderr
