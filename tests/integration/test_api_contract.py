"""Every served OpenAPI document is valid and lists every route the service serves.

The four services run together in this process against the real broker and database
(the `stack` fixture in conftest.py; the fuzz test uses the same)."""
from __future__ import annotations

import re

import pytest

from services.plumbing.http import ROUTES
from tests import support
from tests.integration.conftest import STACK_SERVICES as SERVICES

pytestmark = pytest.mark.integration


def _document(base_url: str) -> dict:
    response = support.ApiClient(base_url).get("/openapi.json")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_openapi_document_is_valid_and_lists_every_served_route(stack, service):
    from openapi_spec_validator import validate

    document = _document(stack[service])
    validate(document)  # raises with the offending path on an invalid document
    served = {(method.lower(), route.url) for (svc, methods, _), route in ROUTES.items() if svc == service
              for method in methods.split(",")}
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
    served = {(method, re.sub(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", r"{\1}", url)) for method, url in served}
    assert served == documented


def test_openapi_document_needs_a_signed_in_caller(stack):
    assert support.ApiClient(stack["inspection"], token=None).get("/openapi.json").status_code == 401


# The only routes an anonymous caller may reach: operators' probes, the issuer's keys and
# the sign-in endpoints themselves.
PUBLIC_ROUTES = {
    ("get", "/health"), ("get", "/health/live"), ("get", "/health/ready"), ("get", "/metrics"), ("get", "/.well-known/jwks.json"),
    ("post", "/auth/login"), ("post", "/auth/refresh"), ("post", "/auth/logout"), ("post", "/auth/token"),
    # A sampled resident answers a survey with a one-time code (rate-limited per client address).
    ("post", "/public/survey-answers"),
    ("get", "/board"),  # notify: the released ranking board (张榜公布)
    # Intake's deliberate public exception (issue 16): residents report without an account
    # (bounded per client address and by identical content) and follow their report by its id.
    ("get", "/open311/v2/services.json"), ("post", "/open311/v2/public/requests.json"),
    ("get", "/open311/v2/public/requests/{case_id}.json"),
}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_route_declares_who_may_call_it_and_anonymous_callers_get_401(stack, service):
    document = _document(stack[service])
    anonymous = support.ApiClient(stack[service], token=None)
    public = set()
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            assert "security" in op, f"{method.upper()} {path} does not declare who may call it"
            if op["security"] == []:
                public.add((method, path))
                continue
            concrete = re.sub(r"{[a-zA-Z_]+}", "x", path)
            kwargs = {"json": {}} if method in ("post", "put") else {}
            response = anonymous.session.request(method.upper(), anonymous.base_url + concrete, timeout=30, **kwargs)
            assert response.status_code == 401, f"{method.upper()} {path}: {response.status_code} {response.text[:200]}"
            assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert public <= PUBLIC_ROUTES, f"unexpected public routes: {sorted(public - PUBLIC_ROUTES)}"
