"""Operator endpoints every service inherits: /health, /metrics, /openapi.json.

    class InspectionService(OperatorEndpoints): ...

/health checks the databases of every service in the process and the broker; /metrics is
the process's Prometheus registry; /openapi.json describes this service's routes.
"""
from __future__ import annotations

from kombu import Connection
from nameko.dependency_providers import Config
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from werkzeug.wrappers import Response

from services.plumbing.db import ENGINES
from services.plumbing.http import ROUTES, api, json_response
from services.plumbing.openapi import build_openapi


class OperatorEndpoints:
    name: str
    config = Config()

    @api("GET", "/health", raw=True)
    def health(self, request):
        checks = {}
        healthy = True
        for service, engine in sorted(ENGINES.items()):
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                checks[f"database:{service}"] = "ok"
            except Exception as exc:  # report, don't raise: this is the health page
                checks[f"database:{service}"] = f"error: {exc.__class__.__name__}"
                healthy = False
        try:
            with Connection(self.config["AMQP_URI"], connect_timeout=3) as conn:
                conn.ensure_connection(max_retries=1)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"error: {exc.__class__.__name__}"
            healthy = False
        return json_response({"status": "ok" if healthy else "degraded", "service": self.name,
                              "checks": checks}, status=200 if healthy else 503)

    @api("GET", "/metrics", raw=True)
    def metrics(self, request):
        return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)

    @api("GET", "/openapi.json", raw=True)
    def openapi(self, request):
        routes = [r for r in ROUTES.values() if r.service == self.name]
        return json_response(build_openapi(routes, title=f"Chuangwei 创卫 {self.name} API"))
