"""Wire tiers together with RabbitMQ's federation plugin, from a small config file.

    python -m services.tools.federation wire   infra/tiers/demo.yaml
    python -m services.tools.federation status infra/tiers/demo.yaml
    python -m services.tools.federation unwire infra/tiers/demo.yaml
    python -m services.tools.federation exporter infra/tiers/demo.yaml --listen 127.0.0.1:9419

`exporter` serves `chuangwei_federation_link_up{tier,direction,peer}` for Prometheus: 1 while
the link is running, 0 when it is starting, failing or missing (see infra/prometheus/).

For every tier: its vhost and the four tier exchanges (see services.contracts.tiers).
For every parent-child pair, two links, each with its own least-privilege user:
- upward: the parent's `chuangwei.children` federates from the child's `chuangwei.up`
  (user `up-<child>` on the child's broker may read only that exchange);
- downward: the child's `chuangwei.parent` federates from the parent's `chuangwei.down`
  (user `down-<child>` on the parent's broker may read only that exchange); the child
  binds only its own subtree, so it receives nothing meant for its siblings.
Both links: max-hops 1, ack-mode on-confirm (a message leaves the upstream queue only
once the downstream broker has confirmed it), messages held while a link is down.
"""
from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests
import yaml
from kombu import Connection, Exchange
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.contracts.nodes import NodeCode, is_within
from services.contracts.tiers import (CHILDREN_EXCHANGE, DOWN_EXCHANGE, PARENT_EXCHANGE, TIER_EXCHANGES,
                                      UP_EXCHANGE)

RECONNECT_DELAY_SECONDS = 2


class Tier(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: NodeCode
    name: str = ""
    vhost: str
    parent: NodeCode | None = None
    management_api: str | None = Field(default=None, description="defaults to the file's management_api")
    amqp_host: str | None = Field(default=None, description="host:port the links use to reach this broker")


class TierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    management_api: str = "http://guest:guest@127.0.0.1:15672"
    amqp_host: str = "127.0.0.1:5672"
    app_user: str = Field(default="guest", description="the user the stacks' services connect as")
    tiers: list[Tier]

    @model_validator(mode="after")
    def _check_tree(self):
        nodes = {t.node for t in self.tiers}
        if len(nodes) != len(self.tiers):
            raise ValueError("tiers: a node appears twice")
        for t in self.tiers:
            if t.parent is not None:
                if t.parent not in nodes:
                    raise ValueError(f"tiers: {t.node}'s parent {t.parent} is not listed")
                if not is_within(t.node, t.parent) or t.node == t.parent:
                    raise ValueError(f"tiers: {t.node} does not lie inside its parent {t.parent}")
        return self

    def tier(self, node: str) -> Tier:
        return next(t for t in self.tiers if t.node == node)

    def children(self, node: str) -> list[Tier]:
        return [t for t in self.tiers if t.parent == node]

    def api_of(self, tier: Tier) -> "ManagementApi":
        return ManagementApi(tier.management_api or self.management_api)

    def host_of(self, tier: Tier) -> str:
        return tier.amqp_host or self.amqp_host

    def amqp_uri(self, tier: Tier, user: str | None = None, password: str | None = None) -> str:
        api = urlsplit(tier.management_api or self.management_api)
        user = user or api.username or "guest"
        password = password or api.password or "guest"
        return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{self.host_of(tier)}/{quote(tier.vhost, safe='')}"


def load_config(path: str | Path) -> TierConfig:
    return TierConfig.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


@dataclass
class ManagementApi:
    uri: str

    def __post_init__(self):
        parts = urlsplit(self.uri)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api"
        self.auth = (parts.username or "guest", parts.password or "guest")

    def _call(self, method: str, path: str, body=None, ok=(200, 201, 204)):
        # The management API answers 500 now and then while a vhost or link is being set up.
        for attempt in range(5):
            response = requests.request(method, self.base + path, auth=self.auth, json=body, timeout=15)
            if response.status_code < 500:
                break
            time.sleep(0.5 * (attempt + 1))
        if response.status_code not in ok:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content and response.status_code == 200 else None

    def put(self, path, body=None):
        return self._call("PUT", path, body or {})

    def get(self, path):
        return self._call("GET", path)

    def delete(self, path):
        return self._call("DELETE", path, ok=(200, 204, 404))


def _vh(vhost: str) -> str:
    return quote(vhost, safe="")


def up_user(child: Tier) -> str:
    # Users are broker-wide; the vhost keeps two deployments on one broker apart.
    return f"up-{child.vhost}"


def down_user(child: Tier) -> str:
    return f"down-{child.vhost}"


def _link_permissions(readable_exchange: str) -> dict:
    # The federation link declares its own queue and exchange ("federation: ...") on the
    # upstream and reads the one exchange it federates; nothing else.
    return {"configure": "^federation: .*", "write": "^federation: .*",
            "read": f"^({_exact(readable_exchange)[1:-1]}|federation: .*)$"}


def wire_tier(config: TierConfig, tier: Tier) -> None:
    api = config.api_of(tier)
    api.put(f"/vhosts/{_vh(tier.vhost)}")
    api.put(f"/permissions/{_vh(tier.vhost)}/{quote(config.app_user, safe='')}",
            {"configure": ".*", "write": ".*", "read": ".*"})
    with Connection(config.amqp_uri(tier)) as conn:
        for name in TIER_EXCHANGES:
            Exchange(name, type="topic", durable=True)(conn.default_channel).declare()


def _exact(name: str) -> str:
    return "^" + name.replace(".", "\\.") + "$"


def _wire_one_way(config: TierConfig, upstream: Tier, downstream: Tier, user: str, upstream_exchange: str,
                  upstream_name: str, downstream_exchange: str, policy: str, policy_definition: dict) -> None:
    """One link: `downstream`'s exchange federates from `upstream`'s, as `user` (who may read
    only that exchange on the upstream broker; a fresh random password on every wiring)."""
    password = secrets.token_urlsafe(24)
    upstream_api, downstream_api = config.api_of(upstream), config.api_of(downstream)
    upstream_api.put(f"/users/{user}", {"password": password, "tags": ""})
    upstream_api.put(f"/permissions/{_vh(upstream.vhost)}/{user}", _link_permissions(upstream_exchange))
    downstream_api.put(f"/parameters/federation-upstream/{_vh(downstream.vhost)}/{upstream_name}", {"value": {
        "uri": config.amqp_uri(upstream, user, password), "exchange": upstream_exchange,
        "max-hops": 1, "ack-mode": "on-confirm", "trust-user-id": False,
        "reconnect-delay": RECONNECT_DELAY_SECONDS}})
    downstream_api.put(f"/policies/{_vh(downstream.vhost)}/{policy}", {
        "pattern": _exact(downstream_exchange), "apply-to": "exchanges",
        "definition": policy_definition, "priority": 1})


def wire_link(config: TierConfig, parent: Tier, child: Tier) -> None:
    # Upward: the parent's chuangwei.children pulls from every child's chuangwei.up.
    _wire_one_way(config, child, parent, up_user(child), UP_EXCHANGE, f"child-{child.node}", CHILDREN_EXCHANGE,
                  "chuangwei-children", {"federation-upstream-pattern": "^child-"})
    # Downward: the child's chuangwei.parent pulls from the parent's chuangwei.down.
    _wire_one_way(config, parent, child, down_user(child), DOWN_EXCHANGE, "parent", PARENT_EXCHANGE,
                  "chuangwei-parent", {"federation-upstream": "parent"})


def wire(config: TierConfig) -> None:
    for tier in config.tiers:
        wire_tier(config, tier)
    for tier in config.tiers:
        if tier.parent is not None:
            wire_link(config, config.tier(tier.parent), tier)


def set_upward_link(config: TierConfig, child_node: str, enabled: bool) -> None:
    """Cut or restore a child's upward link (what a network outage does), for drills and tests.

    Cutting revokes the link user's rights and closes its connections; the parent keeps
    retrying, and the child's events wait in the link's durable queue on the child's broker.
    """
    child = config.tier(child_node)
    api = config.api_of(child)
    user = up_user(child)
    if enabled:
        api.put(f"/permissions/{_vh(child.vhost)}/{user}", _link_permissions(UP_EXCHANGE))
        return
    api.delete(f"/permissions/{_vh(child.vhost)}/{user}")
    # The management API lists a connection only after its first statistics tick.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        mine = [c for c in api.get("/connections") or [] if c.get("user") == user]
        for connection in mine:
            api.delete(f"/connections/{quote(connection['name'], safe='')}")
        if mine:
            return
        time.sleep(0.5)


def link_status(config: TierConfig) -> list[dict]:
    out = []
    for tier in config.tiers:
        for link in config.api_of(tier).get(f"/federation-links/{_vh(tier.vhost)}") or []:
            out.append({"tier": tier.node, "upstream": link.get("upstream"), "exchange": link.get("exchange"),
                        "status": link.get("status"), "error": link.get("error")})
    return out


def expected_links(config: TierConfig) -> list[tuple[Tier, str, str, str]]:
    """(downstream tier, direction, peer node, upstream name) of every link the wiring creates."""
    links = []
    for tier in config.tiers:
        if tier.parent is not None:
            links.append((config.tier(tier.parent), "up", tier.node, f"child-{tier.node}"))
            links.append((tier, "down", tier.parent, "parent"))
    return links


def link_states(config: TierConfig) -> list[dict]:
    """Every expected link with up = 1 (running) or 0 (starting, failing, or missing)."""
    running: dict[str, set[str]] = {}
    for tier in config.tiers:
        try:
            links = config.api_of(tier).get(f"/federation-links/{_vh(tier.vhost)}") or []
        except (requests.RequestException, RuntimeError):  # a broker we cannot reach: its links count as down
            links = []
        running[tier.node] = {link.get("upstream") for link in links if link.get("status") == "running"}
    return [{"tier": tier.node, "direction": direction, "peer": peer,
             "up": 1 if upstream in running.get(tier.node, set()) else 0}
            for tier, direction, peer, upstream in expected_links(config)]


class LinkCollector:
    """A Prometheus collector that asks the management APIs on every scrape."""

    def __init__(self, config: TierConfig):
        self.config = config

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        family = GaugeMetricFamily("chuangwei_federation_link_up",
                                   "1 while the federation link runs (direction up: child to parent)",
                                   labels=["tier", "direction", "peer"])
        for row in link_states(self.config):
            family.add_metric([row["tier"], row["direction"], row["peer"]], row["up"])
        yield family


def serve_exporter(config: TierConfig, listen: str) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    registry = CollectorRegistry()
    registry.register(LinkCollector(config))
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    while True:
        time.sleep(3600)


def unwire(config: TierConfig) -> None:
    for tier in config.tiers:
        api = config.api_of(tier)
        api.delete(f"/vhosts/{_vh(tier.vhost)}")
        if tier.parent is not None:
            api.delete(f"/users/{up_user(tier)}")
            config.api_of(config.tier(tier.parent)).delete(f"/users/{down_user(tier)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["wire", "status", "unwire", "exporter"])
    parser.add_argument("config")
    parser.add_argument("--listen", default="127.0.0.1:9419", help="exporter: host:port to serve /metrics on")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.action == "wire":
        wire(config)
        print(f"wired {len(config.tiers)} tiers")
    elif args.action == "status":
        for row in link_status(config):
            print(json.dumps(row, ensure_ascii=False))
    elif args.action == "exporter":
        serve_exporter(config, args.listen)
    else:
        unwire(config)
        print("removed the tiers' vhosts and link users")
    return 0


if __name__ == "__main__":
    sys.exit(main())
