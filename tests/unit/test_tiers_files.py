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
        # Escalations go up the link to the parent tier's stack, and the top tier keeps them (issue 25).
        assert str(env.get("PARENT_STACK") or "") == (tier.parent or ""), f"{tier.node}: PARENT_STACK"
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


def test_demo_plan_fits_the_demo_file():
    """chuangwei-demo: every tier of demo.yaml inspects something in both months, never in the future."""
    import random
    from datetime import datetime, timezone

    from services.tools import demo

    config = federation.load_config(TIERS / "demo.yaml")
    stacks = {s.node: s for s in demo.build_stacks(config, 9100)}
    visits = demo.plan_visits(stacks, random.Random(1))
    now = datetime.now(timezone.utc)
    assert all(v.at <= now and v.at.date() <= demo.LAST_DAY for v in visits)
    for node in stacks:
        months = {f"{v.at:%Y-%m}" for v in visits if v.stack.node == node}
        assert months == set(demo.MONTHS), f"{node} inspects in {sorted(months)}"
    for stack in stacks.values():   # CHILD_STACKS of each tier are its children in the file
        assert set(stack.children) == {t.node for t in config.children(stack.node)}
    ports = [s.port(name) for s in stacks.values() for name in demo.SERVICES]
    assert len(set(ports)) == len(ports)
    for visit in visits:
        assert demo.findings_for(visit.checklist, visit.quality, random.Random(2)) is not None
