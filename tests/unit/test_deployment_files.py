"""The deployment files parse and agree with the code."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["inspection", "scoring", "tasks", "notify", "accounts", "indicators", "photos", "console", "intake"]


def test_compose_file_names_every_service_and_its_infrastructure():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    for name in SERVICES + ["rabbitmq", "postgres", "prometheus", "alertmanager"]:
        assert name in services, f"docker-compose.yml lacks {name}"
    for name in SERVICES:
        command = services[name]["command"]
        assert f"services.{name}.service" in command
        assert services[name]["environment"][f"{name.upper()}_ADDRESS"] == "0.0.0.0:8000"
        assert (ROOT / "services" / name / "__init__.py").exists()
    plugins = (ROOT / "infra" / "rabbitmq" / "enabled_plugins").read_text()
    for plugin in ("rabbitmq_management", "rabbitmq_federation", "rabbitmq_prometheus"):
        assert plugin in plugins


def test_prometheus_scrapes_every_service():
    config = yaml.safe_load((ROOT / "infra" / "prometheus" / "compose.yml").read_text(encoding="utf-8"))
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    for name in SERVICES:
        assert f"{name}:8000" in targets


def test_stack_config_gives_each_service_its_own_port():
    from nameko.cli.main import setup_yaml_parser
    setup_yaml_parser()
    config = yaml.safe_load((ROOT / "infra" / "nameko.yaml").read_text(encoding="utf-8"))
    addresses = config["WEB_ADDRESSES"]
    assert sorted(addresses) == sorted(SERVICES)
    assert len(set(addresses.values())) == len(SERVICES)
    assert str(config["NODE_CODE"]) == "411502008000"  # the env-var resolver yields an int


def consumed_exchanges() -> dict[str, set[str]]:
    """Consuming service → the producers whose `<source>.events` its event handlers bind to
    (the tier exchanges, fed by federation links, are not checked by producer)."""
    import importlib
    from services.plumbing.consumer import ReliableEventHandler
    consumed: dict[str, set[str]] = {}
    for name in SERVICES:
        module = importlib.import_module(f"services.{name}.service")
        [cls] = [c for c in vars(module).values()
                 if isinstance(c, type) and c.__module__ == module.__name__ and getattr(c, "name", None) == name]
        for attr in vars(cls).values():
            for entrypoint in getattr(attr, "nameko_entrypoints", ()):
                if isinstance(entrypoint, ReliableEventHandler) and entrypoint.exchange_override is None:
                    consumed.setdefault(name, set()).add(entrypoint.source_service)
    return consumed


def test_every_producer_a_consumer_binds_to_is_named_and_readable():
    """A consumer whose producer has no broker user in EVENT_PRODUCERS refuses to start, and
    one whose broker user may not read the producer's exchange cannot bind: every `<source>`
    consumed (indicators for the tasks ledger's satisfaction findings and scoring's satisfaction
    source and vector density veto, intake for its cases)
    is in infra/nameko.yaml, in the permissions infra/README.md grants and in those the test
    brokers give (tests/nodes.py)."""
    import re
    from nameko.cli.main import setup_yaml_parser
    from tests.nodes import service_permissions
    setup_yaml_parser()
    config = yaml.safe_load((ROOT / "infra" / "nameko.yaml").read_text(encoding="utf-8"))
    readme = (ROOT / "infra" / "README.md").read_text(encoding="utf-8")
    bound = re.search(r"^BOUND='([^']+)'", readme, re.M).group(1)
    consumed = consumed_exchanges()
    assert "indicators" in consumed["tasks"] and "intake" in consumed["tasks"]
    assert "indicators" in consumed["scoring"] and "intake" in consumed["scoring"]
    for consumer, sources in consumed.items():
        for source in sources:
            exchange = f"{source}.events"
            assert source in config["EVENT_PRODUCERS"], f"{consumer} consumes {source}: EVENT_PRODUCERS lacks it"
            assert re.fullmatch(bound, exchange), f"infra/README.md: {consumer} may not bind to {exchange}"
            for permission in ("configure", "read"):
                assert re.fullmatch(service_permissions(consumer)[permission], exchange), (
                    f"tests/nodes.py: {consumer} may not {permission} {exchange}")
