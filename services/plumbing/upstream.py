"""Calling another service's HTTP API on behalf of the signed-in caller.

Services never import each other; when one needs another's answer for the same person
(the console rendering a page, the photo store asking whether a caller may see an
inspection), it calls the other's HTTP API with the caller's own access token, so the
other service decides with its own rules and nothing is widened on the way.

Where a service listens: `SERVICE_URLS: {inspection: http://…}` in the config, else the
service's own entry in `WEB_ADDRESSES` (one process, several services), else an error
that names the setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from services.plumbing.auth import Unauthenticated

DEFAULT_TIMEOUT = 10.0


class UpstreamUnavailable(ConnectionError):
    """The other service did not answer (a connection error or a 5xx): the dependency is down,
    not the request wrong."""

    def __init__(self, service: str, reason: str):
        super().__init__(f"{service} unavailable: {reason}")
        self.service = service
        self.reason = reason


def service_url(config: dict, service: str) -> str:
    explicit = (config.get("SERVICE_URLS") or {}).get(service)
    if explicit:
        return str(explicit).rstrip("/")
    address = (config.get("WEB_ADDRESSES") or {}).get(service)
    if not address:
        raise LookupError(f"no address for the {service} service: set SERVICE_URLS.{service} "
                          f"or WEB_ADDRESSES.{service}")
    host, _, port = str(address).rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


@dataclass
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]

    def json(self) -> Any:
        import json
        return json.loads(self.body.decode("utf-8"))

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Upstreams:
    """HTTP calls to the stack's other services, as a given caller (bearer token)."""

    def __init__(self, config: dict, session: requests.Session | None = None, timeout: float | None = None):
        self.config = config
        self.session = session or requests.Session()
        self.timeout = float(timeout or config.get("UPSTREAM_TIMEOUT", DEFAULT_TIMEOUT))

    def url(self, service: str, path: str) -> str:
        return service_url(self.config, service) + path

    def call(self, service: str, method: str, path: str, token: str | None, *, params=None, data: bytes | None = None,
             content_type: str | None = None, headers: dict | None = None) -> UpstreamResponse:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        if content_type:
            sent["Content-Type"] = content_type
        try:
            url = self.url(service, path)
        except LookupError as exc:  # not part of this installation: unavailable, not a crash
            raise UpstreamUnavailable(service, str(exc)) from exc
        try:
            response = self.session.request(method, url, params=params, data=data,
                                            headers=sent, timeout=self.timeout)
        except requests.RequestException as exc:
            raise UpstreamUnavailable(service, str(exc)) from exc
        kept = {name: value for name, value in response.headers.items()
                if name.lower() in ("content-disposition", "retry-after", "x-request-id", "cache-control")}
        return UpstreamResponse(response.status_code, response.content,
                                response.headers.get("Content-Type", "application/octet-stream"), kept)

    def get_json(self, service: str, path: str, token: str | None, params=None) -> Any:
        """A read whose failure is the page's failure: raises UpstreamUnavailable on 5xx,
        Unauthenticated on 401 (the session ended), returns None on 403/404 (not the caller's
        to see), the document otherwise."""
        response = self.call(service, "GET", path, token, params=params)
        if response.status >= 500:
            raise UpstreamUnavailable(service, f"HTTP {response.status}")
        if response.status == 401:
            raise Unauthenticated(f"{service} refused the session: sign in again")
        if response.status in (403, 404):
            return None
        if not response.ok:
            raise UpstreamUnavailable(service, f"HTTP {response.status}: {response.body[:200]!r}")
        return response.json()
