"""A real Prometheus (Debian's package) scrapes a running service, records, and alerts.

Prometheus runs on a free port with its own data directory and a config written here that
scrapes the inspection service started in this process (and one port where nothing listens),
with the repository's recording and alert rules plus one rule that fires at once. The test
submits an inspection and reads the campaign metric, a recorded series and the alerts' states
back through Prometheus' HTTP API. Without the binary the test fails (.ci/run installs it).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from tests import support
from tests.integration.test_inspection_service import inspection_body, register

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "infra" / "prometheus" / "rules"
TIER = "411502008000"


@pytest.fixture
def prometheus(tmp_path, inspection_stack):
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: apt-get install prometheus (.ci/run does)"
    service = inspection_stack["config"]["WEB_ADDRESSES"]["inspection"]
    dead = f"127.0.0.1:{support.free_port()}"  # nothing listens here: a service that is down
    (tmp_path / "quick.yml").write_text(yaml.safe_dump({"groups": [{"name": "quick", "rules": [{
        "alert": "TestInspectionsCounted",
        "expr": f'sum by (tier) (chuangwei_inspections_submitted_total{{tier="{TIER}"}}) > 0',
        "labels": {"audience": "campaign", "severity": "warning"}}]}]}))
    config = {
        # A scrape slower than its timeout marks the series stale and resolves the alerts built on
        # it; on a loaded 2-core machine /metrics can take more than a second to answer.
        "global": {"scrape_interval": "3s", "scrape_timeout": "3s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES / "recording.yml"), str(RULES / "alerts.yml"), str(tmp_path / "quick.yml")],
        "scrape_configs": [{"job_name": "chuangwei", "metrics_path": "/metrics", "static_configs": [
            {"targets": [service], "labels": {"tier": TIER, "component": "inspection"}},
            {"targets": [dead], "labels": {"tier": TIER, "component": "scoring"}}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = support.free_port()
    log = open(tmp_path / "prometheus.log", "w")
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready():
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                return requests.get(f"{base}/-/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False
        support.wait_until(ready, timeout=60)
        yield {"base": base, "service": service, "dead": dead, **inspection_stack}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def query(base: str, expr: str) -> list[dict]:
    response = requests.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def alerts(base: str) -> list[dict]:
    body = requests.get(f"{base}/api/v1/alerts", timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["alerts"]


def test_prometheus_scrapes_a_campaign_metric_and_reports_alert_states(prometheus):
    base, api = prometheus["base"], prometheus["api"]
    before = float(next(
        (line.split()[-1] for line in api.get("/metrics").text.splitlines()
         if line.startswith('chuangwei_inspections_submitted_total{kind="routine"}')), 0))
    subject, place = register(api)
    assert api.post("/inspections", inspection_body(subject, place)).status_code == 201

    def scraped_the_new_inspection():
        rows = query(base, f'chuangwei_inspections_submitted_total{{tier="{TIER}", kind="routine"}}')
        return rows and float(rows[0]["value"][1]) >= before + 1 and rows
    rows = support.wait_until(scraped_the_new_inspection, timeout=60)
    assert rows[0]["metric"]["component"] == "inspection"
    assert rows[0]["metric"]["instance"] == prometheus["service"]

    # The scrape itself: up, the health checks and the per-entrypoint histogram reached Prometheus.
    def up():
        return {row["metric"]["instance"]: row["value"][1] for row in query(base, 'up{job="chuangwei"}')}
    support.wait_until(lambda: len(up()) == 2, timeout=60, message="both targets scraped")
    assert up() == {prometheus["service"]: "1", prometheus["dead"]: "0"}
    assert query(base, f'chuangwei_health_check_up{{tier="{TIER}", check="broker"}} == 1')
    assert query(base, f'chuangwei_entrypoint_seconds_count{{tier="{TIER}", service="inspection", kind="http"}}')
    # The outbox relay reports its backlog and the age of its oldest unsent event (none left: 0).
    support.wait_until(lambda: query(base, f'chuangwei_outbox_oldest_age_seconds{{tier="{TIER}", service="inspection"}} == 0'),
                       timeout=60)
    assert query(base, f'chuangwei_db_pool_connections_limit{{tier="{TIER}", service="inspection"}} > 0')
    # The repository's recording rules evaluate against the real series.
    support.wait_until(lambda: query(base, f'tier:chuangwei_http_requests:rate5m{{tier="{TIER}", service="inspection"}}'),
                       timeout=60)

    def states():
        return {(a["labels"]["alertname"], a["labels"].get("instance")): a["state"] for a in alerts(base)}
    # The quick rule fires; the real ServiceDown rule holds the dead target pending (its `for:`
    # is 2 minutes) and says nothing about the live one.
    def quick_alert_firing():
        return [a for a in alerts(base)
                if a["labels"]["alertname"] == "TestInspectionsCounted" and a["state"] == "firing"]
    firing = support.wait_until(quick_alert_firing, timeout=60)
    assert firing[0]["labels"] == {"alertname": "TestInspectionsCounted", "tier": TIER,
                                   "audience": "campaign", "severity": "warning"}
    support.wait_until(lambda: states().get(("ChuangweiServiceDown", prometheus["dead"])) == "pending", timeout=60)
    assert ("ChuangweiServiceDown", prometheus["service"]) not in states()
