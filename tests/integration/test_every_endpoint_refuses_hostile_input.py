"""Every endpoint of every service turns hostile input away with a 4xx naming the field, and
writes nothing: generated from the routes the services declare, so a new endpoint is covered
the day it is added.

For each route with a JSON body: 1,000 levels of nesting; a 5,000-digit integer in every field
(past Python's int-string conversion limit, and an anonymous 500 before issue 27) and numbers
no float holds (1e999, NaN) in every number field; a NUL in every string-typed field;
instants outside the campaign years (0001, 9999) in every date-time field; periods 0001-01
and 9999-12. For each route with a query: the same for its string and date-time parameters.
Afterwards no audit entry carries any of these requests' ids (every write is audited by the
plumbing, so an entry would mean a refused request changed something).

Formula-leading text (`=cmd|…`) is deliberately NOT refused: it is a legitimate note or name
("-2 级" or "=" in a complaint). It is stored as data and neutralised where it could act as
a formula, in the exports (tests/integration/test_tasks_permissions.py for the ledger,
tests/integration/test_every_write_is_audited.py for the archive).
"""
from __future__ import annotations

import itertools
import re

import pytest

from services.plumbing.http import ROUTES
from tests import support
from tests.integration.conftest import STACK_SERVICES as SERVICES

pytestmark = pytest.mark.integration

NUL = "a\u0000b"
HUGE_INTEGER = "9" * 5000
OUT_OF_RANGE_INSTANTS = ("0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00")
OUT_OF_RANGE_PERIODS = ("0001-01", "9999-12")
_REQUEST_IDS = itertools.count(1)


def _branches(schema: dict, definitions: dict) -> list[dict]:
    """The alternatives a property's schema allows (anyOf/oneOf flattened, $refs resolved)."""
    if "$ref" in schema:
        return _branches(definitions[schema["$ref"].rsplit("/", 1)[-1]], definitions)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return [b for sub in schema[key] for b in _branches(sub, definitions)]
    return [schema]


def _properties(model) -> dict[str, list[dict]]:
    schema = model.model_json_schema()
    definitions = schema.get("$defs", {})
    return {name: _branches(prop, definitions) for name, prop in schema.get("properties", {}).items()}


def _takes(branches: list[dict], kind: str) -> bool:
    if kind == "instant":
        return any(b.get("format") == "date-time" for b in branches)
    if kind == "period":
        return any("YYYY-MM" in b.get("description", "") or b.get("pattern", "").startswith(r"^\d{4}-")
                   or b.get("title", "").lower() == "period" for b in branches)
    if kind == "string":
        return any(b.get("type") == "string" and "format" not in b and "enum" not in b for b in branches)
    if kind == "number":
        return any(b.get("type") in ("integer", "number") for b in branches)
    raise ValueError(kind)


def _concrete(url: str, known: dict[str, str]) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", lambda m: known.get(m.group(1), "x"), url)


class Prober:
    """Sends hostile requests as a caller holding every role, each with its own request id,
    and collects every answer that is not the expected refusal."""

    def __init__(self, base_url: str):
        from services.contracts.identity import ALL_ROLES
        self.client = support.ApiClient(base_url, token=support.token(
            "攻击者", [(role, support.TEST_PROVINCE) for role in ALL_ROLES]))
        self.request_ids: list[str] = []
        self.failures: list[str] = []

    def send(self, label: str, method: str, path: str, *, data: bytes | None = None, field: str | None,
             statuses=(400, 422)) -> None:
        request_id = f"hostile-{next(_REQUEST_IDS):05d}"
        self.request_ids.append(request_id)
        headers = {"X-Request-Id": request_id}
        if data is not None:
            headers["Content-Type"] = "application/json"
        response = self.client.request(method, path, data=data, headers=headers)
        if response.status_code not in statuses:
            self.failures.append(f"{method} {path} {label}: {response.status_code} {response.text[:300]}")
            return
        error = response.json()
        named = [e.get("field", "") for e in error.get("errors", [])]
        if not (error.get("error") and error.get("message")):
            self.failures.append(f"{method} {path} {label}: an error without a code or a message: {error}")
        elif field is not None and not any(n == field or n.startswith((field + ".", field + "["))
                                           for n in named):
            self.failures.append(f"{method} {path} {label}: {field!r} not among the fields named {named}")


def _json(value) -> bytes:
    import json
    return json.dumps(value, ensure_ascii=False).encode()


def _probe_body(prober: Prober, method: str, path: str, model) -> None:
    prober.send("nested 1000 deep", method, path, data=b'{"x": ' + b"[" * 1000 + b"]" * 1000 + b"}", field="body",
                statuses=(400,))
    for name, branches in _properties(model).items():
        prober.send(f"{name}=<5,000 digits>", method, path, data=b'{"%s": %s}' % (name.encode(), HUGE_INTEGER.encode()),
                    field=name)
        if _takes(branches, "number"):
            for literal in (b"1e999", b"-" + b"9" * 400 + b".5", b"NaN"):
                prober.send(f"{name}={literal[:8].decode()}", method, path,
                            data=b'{"%s": %s}' % (name.encode(), literal), field=name)
        if _takes(branches, "string"):
            prober.send(f"NUL in {name}", method, path, data=_json({name: NUL}), field=name)
        if _takes(branches, "instant"):
            for instant in OUT_OF_RANGE_INSTANTS:
                prober.send(f"{name}={instant}", method, path, data=_json({name: instant}), field=name)
        if _takes(branches, "period"):
            for period in OUT_OF_RANGE_PERIODS:
                prober.send(f"{name}={period}", method, path, data=_json({name: period}), field=name)


def _probe_query(prober: Prober, method: str, path: str, model) -> None:
    from urllib.parse import quote
    for name, branches in _properties(model).items():
        values = []
        if _takes(branches, "string"):
            values.append(NUL)
        if _takes(branches, "instant"):
            values += OUT_OF_RANGE_INSTANTS
        if _takes(branches, "period"):
            values += OUT_OF_RANGE_PERIODS
        if _takes(branches, "number"):
            values.append(HUGE_INTEGER)
        for value in values:
            prober.send(f"?{name}={value!r}", method, f"{path}?{name}={quote(value)}", field=f"query.{name}")


def _routes_of(service: str):
    return sorted((route for (svc, _, _), route in ROUTES.items() if svc == service), key=lambda r: (r.url, r.method))


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_route_refuses_hostile_input_naming_the_field(stack, service):
    prober = Prober(stack[service])
    probed = 0
    for route in _routes_of(service):
        path = _concrete(route.url, stack["known"])
        for method in route.method.split(","):
            if route.body is not None:
                _probe_body(prober, method, path, route.body)
                probed += 1
            if route.query is not None:
                _probe_query(prober, method, path, route.query)
                probed += 1
    assert probed, f"{service} declares no body or query to probe: is it started?"
    assert not prober.failures, f"{len(prober.failures)} answers were not a 4xx naming the field:\n" \
        + "\n".join(prober.failures)
    _assert_nothing_audited(stack, service, prober.request_ids)


def _assert_nothing_audited(stack, service: str, request_ids: list[str]) -> None:
    if service == "photos":
        return  # photos keeps no database and so no audit log (its store is content-addressed files)
    admin = support.ApiClient(stack[service])
    for request_id in request_ids:
        response = admin.get(f"/audit?request_id={request_id}")
        assert response.status_code == 200, response.text
        assert response.json() == [], f"refused request {request_id} left an audit entry: {response.json()}"


def test_the_probe_reaches_every_kind_of_field(stack):
    """The generator is only as good as its field detection: it must find string, instant and
    period fields among the declared bodies and queries (or the test above proves little)."""
    kinds = {"string": 0, "instant": 0, "period": 0}
    for route in ROUTES.values():
        for model in (route.body, route.query):
            if model is None:
                continue
            for branches in _properties(model).values():
                for kind in kinds:
                    kinds[kind] += _takes(branches, kind)
    assert kinds["string"] > 50 and kinds["instant"] > 10 and kinds["period"] > 5, kinds
