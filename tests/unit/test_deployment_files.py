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
