"""Several tiers' stacks in one test: each with its own vhost (wired by RabbitMQ
federation, as in production), its own PostgreSQL database and its own ports."""
from __future__ import annotations

import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest

from services.inspection.service import InspectionService
from services.scoring.service import ScoringService
from services.tasks.service import TasksService
from services.tools import federation
from tests import support


@dataclass
class TierStack:
    node: str
    name: str
    vhost: str
    database_url: str
    apis: dict = field(default_factory=dict)

    @property
    def inspection(self) -> support.ApiClient:
        return self.apis["inspection"]

    @property
    def scoring(self) -> support.ApiClient:
        return self.apis["scoring"]

    @property
    def tasks(self) -> support.ApiClient:
        return self.apis["tasks"]


@pytest.fixture
def tier_chain(infrastructure, make_database):
    """Start stacks for tiers given as (node, name, parent, child_stacks), with `extra` config
    for every stack; yields {node: TierStack}."""
    run = uuid.uuid4().hex[:6]
    amqp = infrastructure["amqp_uri"]
    host = amqp.split("@", 1)[1].split("/", 1)[0]
    with ExitStack() as stack:
        state = {}

        def start(tiers, **extra):
            config = federation.TierConfig(
                management_api=infrastructure["rabbit_api"], amqp_host=host,
                tiers=[{"node": node, "name": name, "vhost": f"t{run}-{node}", "parent": parent}
                       for node, name, parent, _ in tiers])
            federation.wire(config)
            stack.callback(federation.unwire, config)
            links = sum(2 for t in config.tiers if t.parent)
            support.wait_until(
                lambda: sum(1 for l in federation.link_status(config) if l["status"] == "running") == links,
                timeout=40, message=f"{links} running federation links")
            stacks = {}
            for node, name, parent, children in tiers:
                tier = TierStack(node, name, f"t{run}-{node}", make_database())
                ports = {svc: support.free_port() for svc in ("inspection", "scoring", "tasks")}
                service_config = support.base_config(
                    support.with_vhost(amqp, tier.vhost), tier.database_url, node=node,
                    WEB_ADDRESSES={svc: f"127.0.0.1:{port}" for svc, port in ports.items()},
                    CHILD_STACKS=list(children), PARENT_STACK=parent or "", TASKS_SWEEP_INTERVAL=0,
                    SCORING_POLICY="street",
                    # No more workers than pooled connections (3 + 5, less the relay's and the
                    # pruner's): on a loaded machine more would queue 30 s for a connection and fail.
                    max_workers=5, **extra)
                stack.enter_context(support.running_services(service_config, InspectionService, ScoringService,
                                                             TasksService))
                tier.apis = {svc: support.ApiClient(f"http://127.0.0.1:{port}") for svc, port in ports.items()}
                stacks[node] = tier
            state.update(config=config, stacks=stacks)
            return config, stacks

        yield start
