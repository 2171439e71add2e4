"""The monitoring files: Prometheus accepts them, the alerts fire as their unit tests say, and
every metric a rule, an alert or a dashboard names is one the code really exports.

promtool comes with Debian's `prometheus` package (.ci/run installs it); without it these
tests fail, they do not skip.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "infra" / "prometheus"
ALERTMANAGER = ROOT / "infra" / "alertmanager" / "alertmanager.yml"
SERVICES = ["inspection", "scoring", "tasks", "notify", "accounts", "indicators", "intake"]
CJK = re.compile(r"[\u4e00-\u9fff]")
# RabbitMQ's prometheus plugin (per-object endpoint) metrics the rules use.
RABBITMQ_METRICS = {"rabbitmq_queue_messages", "rabbitmq_queue_messages_ready"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: apt-get install prometheus (.ci/run does)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "rules" / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def recording_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "rules" / "recording.yml").read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def exported_metric_names() -> set[str]:
    """Every sample name the services' registries can export (with _total/_bucket/... suffixes)."""
    import importlib
    from prometheus_client import REGISTRY
    for module in ["services.plumbing.metrics"] + [f"services.{name}.metrics" for name in SERVICES
                                                    if (ROOT / "services" / name / "metrics.py").exists()]:
        importlib.import_module(module)
    names = set(REGISTRY._names_to_collectors)  # noqa: SLF001 - the registry's own name index
    names.add("chuangwei_federation_link_up")  # served by `services.tools.federation exporter`
    return names


def names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:chuangwei|rabbitmq)_[a-z0-9_]+)", expr))


@pytest.mark.parametrize("config", ["tier.yml", "city.yml", "compose.yml"])
def test_promtool_accepts_each_scrape_config(config):
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", "rules/recording.yml", "rules/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_and_stay_silent_as_their_unit_tests_say():
    result = promtool("test", "rules", "tests/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test():
    tests = yaml.safe_load((PROMETHEUS / "tests" / "alerts_test.yml").read_text(encoding="utf-8"))["tests"]
    firing = {check["alertname"] for test in tests for check in test["alert_rule_test"] if check["exp_alerts"]}
    silent = {check["alertname"] for test in tests for check in test["alert_rule_test"] if not check["exp_alerts"]}
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"


def test_every_alert_says_whom_it_is_for_and_what_to_do_in_both_languages():
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["audience"] in ("system", "campaign"), name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert notes["summary"] and not CJK.search(notes["summary"].replace("督办单", "")), name
        assert CJK.search(notes["summary_zh"]), name
        assert CJK.search(notes["runbook"]) and re.search(r"[A-Za-z]{4,} [a-z]+", notes["runbook"]), name


def test_the_required_alerts_exist():
    names = {rule["alert"] for rule in alert_rules()}
    assert {"ChuangweiServiceDown", "ChuangweiServiceUnhealthy", "ChuangweiOutboxBacklogGrowing",
            "ChuangweiOutboxStuck", "ChuangweiEventDeadLetters", "ChuangweiFederationLinkDown",
            "ChuangweiChildTierSilent", "ChuangweiOverdueTasksRising", "ChuangweiUrgeNoticesUndelivered",
            "ChuangweiBulletinNotProduced", "ChuangweiDatabaseConnectionsNearLimit"} <= names


def test_rules_name_only_metrics_the_code_exports():
    exported = exported_metric_names()
    recorded = {rule["record"] for rule in recording_rules()}
    for rule in recording_rules() + alert_rules():
        for name in names_in(rule["expr"]):
            assert name in exported or name in RABBITMQ_METRICS, f"{rule.get('record') or rule['alert']}: {name}"
        for name in re.findall(r"\btier:[a-z0-9_]+:[a-z0-9_]+|\btier:[a-z0-9_]+", rule["expr"]):
            assert name in recorded, f"{rule.get('record') or rule['alert']} uses unrecorded {name}"


def test_tier_config_scrapes_the_ports_of_nameko_yaml_and_the_broker_plugin():
    from nameko.cli.main import setup_yaml_parser
    setup_yaml_parser()
    addresses = yaml.safe_load((ROOT / "infra" / "nameko.yaml").read_text(encoding="utf-8"))["WEB_ADDRESSES"]
    config = yaml.safe_load((PROMETHEUS / "tier.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {sc["labels"]["component"]: sc["targets"][0] for sc in jobs["chuangwei"]["static_configs"]}
    assert targets == {name: str(addresses[name]) for name in SERVICES}
    assert jobs["rabbitmq"]["static_configs"][0]["targets"] == ["127.0.0.1:15692"]
    assert jobs["rabbitmq"]["metrics_path"] == "/metrics/per-object"  # per-queue depths


def _route(tree: dict, labels: dict) -> str:
    """Alertmanager's routing, for the equality matchers this file uses (first match wins)."""
    for child in tree.get("routes", []):
        pairs = [re.fullmatch(r'(\w+)="([^"]*)"', m).groups() for m in child.get("matchers", [])]
        if all(labels.get(k) == v for k, v in pairs):
            return _route(child, labels) if child.get("routes") else child["receiver"]
    return tree["receiver"]


def test_alertmanager_sends_campaign_alerts_to_the_group_bot_and_system_alerts_to_the_operator():
    config = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["office-group-bot"]["webhook_configs"][0]["url"]
    assert receivers["operator"]["email_configs"][0]["to"]
    for rule in alert_rules():
        labels = {"alertname": rule["alert"], **rule["labels"]}
        expected = "office-group-bot" if rule["labels"]["audience"] == "campaign" else "operator"
        assert _route(config["route"], labels) == expected, rule["alert"]
    for inhibit in config.get("inhibit_rules", []):
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            alert = re.fullmatch(r'alertname="(\w+)"', matcher).group(1)
            assert alert in {rule["alert"] for rule in alert_rules()}, alert


GRAFANA = ROOT / "infra" / "grafana"


def dashboards() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted((GRAFANA / "dashboards").glob("*.json"))}


def panel_exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] if panel["type"] != "row"
            for target in panel["targets"]]


def test_grafana_provisions_a_tier_and_a_city_dashboard_from_the_prometheus_datasource():
    boards = dashboards()
    assert set(boards) == {"tier", "city"}
    assert len({board["uid"] for board in boards.values()}) == len(boards)
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "chuangwei.yml").read_text())
    assert provider["providers"][0]["options"]["path"]
    for name, board in boards.items():
        panels = [panel for panel in board["panels"] if panel["type"] != "row"]
        assert panels, name
        for panel in panels:
            assert panel["datasource"]["uid"] == uid, (name, panel["title"])
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), (name, panel["title"])
        assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"]), name


def test_dashboard_expressions_name_only_metrics_that_exist():
    exported = exported_metric_names()
    recorded = {rule["record"] for rule in recording_rules()}
    for name, board in dashboards().items():
        for title, expr in panel_exprs(board):
            used_recorded = set(re.findall(r"\btier:[a-z0-9_]+(?::[a-z0-9_]+)?", expr))
            assert used_recorded <= recorded, (name, title, used_recorded - recorded)
            raw = re.sub(r"\btier:[a-z0-9_]+(?::[a-z0-9_]+)?", "", expr)
            for metric in names_in(raw):
                assert metric in exported or metric in RABBITMQ_METRICS, (name, title, metric)
            assert used_recorded or names_in(raw) or re.search(r"\b(up|ALERTS)\{", raw), (name, title, expr)


def test_dashboard_expressions_are_valid_promql(tmp_path):
    # promtool has no query linter: the expressions go through `check rules` as recording rules.
    rules = [{"record": f"dashboard:expr_{i}", "expr": expr.replace("$tier", "411502008000")}
             for i, (_, expr) in enumerate(expr for board in dashboards().values() for expr in panel_exprs(board))]
    (tmp_path / "dashboards.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", str(tmp_path / "dashboards.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
