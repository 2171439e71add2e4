"""The tier files (infra/tiers/*.yaml) and the multi-tier compose file agree with each other."""
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from services.contracts.nodes import tier_of
from services.tools import federation

ROOT = Path(__file__).resolve().parents[2]
TIERS = ROOT / "infra" / "tiers"
COMPOSE = ROOT / "infra" / "docker-compose.tiers.yml"


def compose_services() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]


@pytest.mark.parametrize("name", ["demo.yaml", "compose.yaml"])
def test_federation_accepts_the_tier_file(name):
    config = federation.load_config(TIERS / name)
    assert len(config.tiers) >= 4
    depths = {tier_of(t.node).depth for t in config.tiers}
    assert len(depths) == 4, f"{name} should span four tiers (city, district, street, community)"
    roots = [t for t in config.tiers if t.parent is None]
    assert len(roots) == 1


def test_every_compose_tier_has_its_own_broker_and_stack():
    config = federation.load_config(TIERS / "compose.yaml")
    services = compose_services()
    brokers_seen = set()
    for tier in config.tiers:
        host = urlsplit(f"amqp://{config.host_of(tier)}").hostname
        api_host = urlsplit(tier.management_api or config.management_api).hostname
        assert host == api_host, f"{tier.node}: amqp_host and management_api name different brokers"
        assert host in services, f"{tier.node}: no broker service {host!r} in {COMPOSE.name}"
        assert services[host]["image"].startswith("rabbitmq:")
        assert any("enabled_plugins" in v for v in services[host]["volumes"])
        brokers_seen.add(host)
        stacks = [s for s in services.values()
                  if str(s.get("environment", {}).get("NODE_CODE")) == tier.node]
        assert len(stacks) == 1, f"{tier.node}: expected one stack service in {COMPOSE.name}"
        env = stacks[0]["environment"]
        assert env["AMQP_URI"].endswith(f"@{config.host_of(tier)}/{tier.vhost}")
        assert env["AMQP_URI"].startswith(f"amqp://{config.app_user}:")
        command = " ".join(stacks[0]["command"])
        for service in ("inspection", "scoring", "tasks", "notify"):
            assert f"services.{service}.service" in command
        children = {c.node for c in config.children(tier.node)}
        assert set(filter(None, str(env.get("CHILD_STACKS") or "").split(","))) == children
        assert "wire" in stacks[0]["depends_on"]
    assert len(brokers_seen) == len(config.tiers), "one broker per tier"


def test_compose_wires_with_the_compose_tier_file():
    services = compose_services()
    command = services["wire"]["command"]
    assert command[-2:] == ["wire", "infra/tiers/compose.yaml"]
    assert "services.tools.federation" in command
    assert "postgres" in services


def test_demo_file_tiers_have_distinct_vhosts():
    config = federation.load_config(TIERS / "demo.yaml")
    assert len({t.vhost for t in config.tiers}) == len(config.tiers)
