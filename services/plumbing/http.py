"""One HTTP layer for every service: JSON in and out, one error handler, API registry.

Entrypoints declare their request and response models; the body is parsed and validated
before the worker runs, so a bad request never reaches the service and changes nothing.
Every error is JSON: {"error": code, "message": ..., "errors": [{"field", "reason"}]}.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Type

from nameko.exceptions import BadRequest as NamekoBadRequest
from nameko.constants import WEB_SERVER_CONFIG_KEY
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import WebServer, WsgiApp, parse_address
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from services.contracts.checklists import ChecklistLookupError
from services.contracts.errors import DomainError, PermissionDenied, UnknownReference
from services.plumbing import metrics
from services.plumbing.db import RETRY_AFTER_SECONDS, log_unavailable, unavailable_dependency
from services.plumbing.auth import ACCESS_COOKIE, Access, Authenticator, Unauthenticated

CSRF_COOKIE = "cw_csrf"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1_000_000
MAX_JSON_DEPTH = 32
JSON_CONTENT_TYPES = ("application/json",)
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 64
# No number the campaign handles has more digits than a 64-bit integer (19): a longer
# integer literal is refused with its field named, before Python's int-string conversion
# limit (4300 digits) raises a ValueError or a database column overflows.
MAX_INTEGER_DIGITS = 20
# C0 controls other than tab, newline and carriage return, and DEL: no campaign text needs
# them, PostgreSQL refuses NUL, and .xlsx cannot hold most of them.
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None."""
    match = _FORBIDDEN_CHARS.search(value)
    if match:
        return f"contains the control character U+{ord(match.group()):04X}, which text may not hold"
    if _LONE_SURROGATE.search(value):
        return "contains an unpaired surrogate, which is not valid Unicode text"
    return None


class OversizeInteger:
    """An integer literal longer than MAX_INTEGER_DIGITS, kept unparsed so that
    `check_json_document` can name its field."""
    __slots__ = ("digits",)

    def __init__(self, digits: int):
        self.digits = digits


class NonFiniteNumber:
    """A number literal too large for a float (1e999, 400 digits), or NaN/Infinity: kept
    so that `check_json_document` can name its field."""
    __slots__ = ("literal",)

    def __init__(self, literal: str):
        self.literal = literal[:20]


def _bounded_int(literal: str) -> int | OversizeInteger:
    digits = len(literal.lstrip("-"))
    return OversizeInteger(digits) if digits > MAX_INTEGER_DIGITS else int(literal)


def _finite_float(literal: str) -> float | NonFiniteNumber:
    value = float(literal)
    return value if math.isfinite(value) else NonFiniteNumber(literal)


def parse_json(text: str) -> Any:
    """json.loads with integer literals bounded (see MAX_INTEGER_DIGITS) and numbers finite;
    the document must then pass `check_json_document`, which refuses either by its field."""
    return json.loads(text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=NonFiniteNumber)


def oversize_integer_reason(digits: int) -> str:
    return (f"整数位数过多（{digits} 位，最多 {MAX_INTEGER_DIGITS} 位）; an integer of {digits} digits "
            f"exceeds the limit of {MAX_INTEGER_DIGITS} digits")


def check_json_document(data: Any, root: str = "body") -> None:
    """Depth, integer size and text checks over a parsed JSON document, iteratively (no
    recursion to exhaust)."""
    stack: list[tuple[Any, str, int]] = [(data, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ApiError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", field=path or root,
                           code="malformed_json")
        if isinstance(value, OversizeInteger):
            raise Unprocessable(oversize_integer_reason(value.digits), field=path or root)
        if isinstance(value, NonFiniteNumber):
            reason = (f"数值超出范围（{value.literal}…）; the number {value.literal}… is not a finite "
                      "number a float can hold")
            raise Unprocessable(reason, field=path or root)
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise Unprocessable(f"{path or root} {problem}", field=path or root)
        elif isinstance(value, dict):
            for key, item in value.items():
                problem = text_problem(key)
                child = f"{path}.{key}" if path else key
                if problem:
                    raise Unprocessable(f"a key {problem}", field=path or root)
                stack.append((item, child, depth + 1))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                stack.append((item, f"{path}[{index}]", depth + 1))


class ApiError(Exception):
    """A request this layer cannot even parse (malformed JSON, oversize body, bad query):
    status, machine code, message, optionally the field. Services raise the domain errors
    of `services.contracts.errors` instead."""
    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None, status: int | None = None,
                 code: str | None = None, errors: list[dict] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.code = code or self.code
        self.errors = errors if errors is not None else ([{"field": field, "reason": message}] if field else [])


class Unprocessable(ApiError):
    status = 422
    code = "validation_error"


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_errors(exc: ValidationError, prefix: str = "") -> list[dict]:
    errors = []
    for err in exc.errors(include_url=False):
        path = _field_path(tuple(err["loc"]))
        errors.append({"field": f"{prefix}{path}" if prefix else path, "reason": err["msg"]})
    return errors


def json_response(payload: Any, status: int = 200, headers: dict | None = None) -> Response:
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json")
    elif isinstance(payload, list) and payload and isinstance(payload[0], BaseModel):
        payload = [p.model_dump(mode="json") for p in payload]
    return json_text_response(json.dumps(payload, ensure_ascii=False, default=str), status, headers)


def json_text_response(text: str, status: int = 200, headers: dict | None = None) -> Response:
    """A JSON document already serialised (e.g. assembled from cached parts)."""
    return Response(text, status=status, headers=headers, content_type="application/json; charset=utf-8")


def error_response(status: int, code: str, message: str, errors: list[dict] | None = None) -> Response:
    return json_response({"error": code, "message": message, "errors": errors or []}, status=status)


@dataclass
class ApiRoute:
    service: str
    method: str
    url: str
    summary: str
    body: Type[BaseModel] | None
    response: Any
    status: int
    query: Type[BaseModel] | None
    tags: list[str] = field(default_factory=list)
    description: str = ""
    access: Access = None  # type: ignore[assignment]  (always set by JsonApi)
    content_type: str = "application/json"
    statuses: tuple[int, ...] = ()
    form: bool = False


# Routes of every service started in this process, for the OpenAPI document.
ROUTES: dict[tuple[str, str, str], ApiRoute] = {}


class JsonWsgiApp(WsgiApp):
    """nameko's WSGI app, but an unknown path or method gets the same JSON error as the rest."""

    def __call__(self, environ, start_response):
        # eventlet's server decodes chunked bodies as they are read, but werkzeug reads a
        # body without Content-Length as empty unless told that the input ends by itself.
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            environ["wsgi.input_terminated"] = True
        request = Request(environ, shallow=True)
        adapter = self.url_map.bind_to_environ(environ)
        try:
            provider, values = adapter.match()
            request.path_values = values
            response = provider.handle_request(request)
        except HTTPException as exc:
            response = error_response(exc.code or 400, "not_found" if exc.code == 404 else "http_error",
                                      f"{request.method} {request.path}: {exc.name}")
            if exc.code == 405 and getattr(exc, "valid_methods", None):
                response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response(environ, start_response)


class ServiceWebServer(WebServer):
    """Each service listens on its own address, so several services can share a process.

    nameko's WebServer is shared per container, not per process: two services in one
    `nameko run` would both bind WEB_SERVER_ADDRESS (with SO_REUSEPORT) and split the
    requests between two URL maps. WEB_ADDRESSES maps a service name to its address.
    """

    def get_wsgi_app(self):
        return JsonWsgiApp(self)

    def make_url_map(self):
        # Paths are matched as sent: werkzeug would answer a double slash with a redirect to
        # the merged path, and a relay (the console's /api) must decide on exactly the path
        # it passes on (issue 27).
        from werkzeug.routing import Map
        url_map = Map(merge_slashes=False)
        for provider in self._providers:
            rule = provider.get_url_rule()
            rule.endpoint = provider
            url_map.add(rule)
        return url_map

    @property
    def bind_addr(self):
        config = self.container.config
        per_service = config.get("WEB_ADDRESSES") or {}
        address = per_service.get(self.container.service_name) or config.get(WEB_SERVER_CONFIG_KEY, "0.0.0.0:8000")
        return parse_address(address)


class JsonApi(HttpRequestHandler):
    """@api("POST", "/inspections", body=Model, response=Model, status=201, summary=...)

    The worker method receives the validated `body` (and `query`) as keyword arguments
    after the request and path values.
    """

    server = ServiceWebServer()
    authenticator = Authenticator()

    def __init__(self, method, url, body: Type[BaseModel] | None = None, response: Any = None,
                 status: int = 200, query: Type[BaseModel] | None = None, summary: str = "",
                 description: str = "", tags: list[str] | None = None, raw: bool = False,
                 access: Access | None = None, content_type: str = "application/json",
                 statuses: tuple[int, ...] = (), form: bool = False, **kwargs):
        if not isinstance(access, Access):
            # Default deny, by construction: a route that does not say who may call it
            # does not start.
            raise TypeError(f"@api({method!r}, {url!r}) must declare access= (PUBLIC or signed_in(...))")
        self.access = access
        # Also accept the body form-encoded (Open311's norm): flat models only.
        self.form = form
        self.content_type = content_type
        self.statuses = tuple(statuses)
        self.body_model = body
        self.response_model = response
        self.status = status
        self.query_model = query
        self.summary = summary
        self.description = description
        self.tags = tags or []
        self.raw = raw
        # Client errors are expected: nameko then logs them as warnings, not as crashes.
        kwargs.setdefault("expected_exceptions", (DomainError, ApiError, ValidationError, ChecklistLookupError,
                                                  Unauthenticated))
        super().__init__(method, url, **kwargs)

    @property
    def _path_fields(self) -> set[str]:
        return set(re.findall(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", self.url))

    def setup(self):
        super().setup()
        service = self.container.service_name
        self.max_body = int(self.container.config.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
        ROUTES[(service, self.method, self.url)] = ApiRoute(
            service, self.method, self.url, self.summary, self.body_model, self.response_model,
            self.status, self.query_model, self.tags or [service], self.description, self.access,
            self.content_type, self.statuses, self.form)

    @property
    def authenticated(self) -> bool:
        return not self.access.public

    def get_entrypoint_parameters(self, request):
        args, kwargs = super().get_entrypoint_parameters(request)
        kwargs = dict(kwargs)
        for name, value in kwargs.items():
            problem = isinstance(value, str) and text_problem(value)
            if problem:
                raise ApiError(f"path parameter {name} {problem}", field=name)
        # Who before what: an anonymous caller learns nothing about the request's validity.
        if self.authenticated:
            kwargs["principal"] = self._authorize(request)
        if self.body_model is not None:
            kwargs["body"] = self._read_body(request)
        if self.query_model is not None:
            kwargs["query"] = self._read_query(request)
        return args, kwargs

    def _authorize(self, request):
        principal = self.authenticator.authenticate(request)
        if (request.method in UNSAFE_METHODS and not request.headers.get("Authorization")
                and request.cookies.get(ACCESS_COOKIE)):
            # A cookie rides along on cross-site requests; a header the other site cannot
            # read and repeat does not (double-submit token).
            expected = request.cookies.get(CSRF_COOKIE)
            if not expected or request.headers.get(CSRF_HEADER) != expected:
                raise PermissionDenied(CSRF_HEADER, "cross-site request refused: the "
                                       f"{CSRF_HEADER} header must repeat the {CSRF_COOKIE} cookie")
        if not any(g.role in self.access.roles for g in principal.grants):
            raise PermissionDenied("role", f"需要角色 {'/'.join(self.access.roles)}; requires one "
                                   f"of the roles {', '.join(self.access.roles)}")
        request.principal = principal
        return principal

    def _read_query(self, request) -> BaseModel:
        values = request.args.to_dict()
        for name, value in values.items():
            problem = text_problem(value) or text_problem(name)
            if problem:
                raise Unprocessable(f"query.{name} {problem}", field=f"query.{name}")
        try:
            return self.query_model.model_validate(values)
        except ValidationError as exc:
            raise Unprocessable("invalid query parameters", errors=validation_errors(exc, "query.")) from exc

    def _read_body(self, request) -> BaseModel:
        mimetype = (request.mimetype or "").lower()
        if self.form and mimetype == FORM_CONTENT_TYPE:
            # A cross-site form may reach such a route: a console cookie alone is refused
            # there by the double-submit check in _authorize (a form cannot set the header).
            return self._read_form(request)
        if mimetype not in JSON_CONTENT_TYPES and not (mimetype.startswith("application/")
                                                       and mimetype.endswith("+json")):
            # Also what stops a cross-site form or text/plain POST (CSRF): browsers cannot
            # send application/json to another origin without a preflight.
            allowed = "application/json" + (f" or {FORM_CONTENT_TYPE}" if self.form else "")
            raise ApiError(f"Content-Type must be {allowed}, not {request.mimetype or 'missing'}",
                           field="Content-Type", status=415, code="unsupported_media_type")
        raw = self._read_raw(request)
        if not raw:
            raise ApiError("request body is empty; a JSON object is required", field="body",
                           code="malformed_json")
        try:
            data = parse_json(raw.decode("utf-8"))
        except RecursionError as exc:
            raise ApiError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", field="body",
                           code="malformed_json") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(f"malformed JSON: {exc}", field="body", code="malformed_json") from exc
        except ValueError as exc:  # any other conversion limit: a bad body, never a 500
            raise ApiError(f"JSON 无法解析; malformed JSON: {exc}", field="body", code="malformed_json") from exc
        check_json_document(data)
        try:
            # Strict: a JSON `false` or `0` is not a number or a boolean of the other kind.
            return self.body_model.model_validate_json(raw, strict=True)
        except ValidationError as exc:
            raise Unprocessable("request body is invalid", errors=validation_errors(exc)) from exc

    def _read_raw(self, request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise ApiError(f"request body of {length} bytes exceeds the limit of {self.max_body}",
                           field="body", status=413, code="payload_too_large")
        raw = request.stream.read(self.max_body + 1)
        if len(raw) > self.max_body:
            raise ApiError(f"request body exceeds the limit of {self.max_body} bytes",
                           field="body", status=413, code="payload_too_large")
        return raw

    def _read_form(self, request) -> BaseModel:
        """A form-encoded body, under the same bounds as JSON: size, field count, text. Form
        values are all text, so they are validated in lax mode ("31.9" is a number)."""
        from urllib.parse import parse_qsl
        raw = self._read_raw(request)
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=False, strict_parsing=bool(raw),
                              max_num_fields=MAX_FORM_FIELDS, errors="strict")
        except ValueError as exc:  # also UnicodeDecodeError
            raise ApiError(f"malformed form body: {exc}", field="body", code="malformed_form") from exc
        values: dict[str, str] = {}
        for name, value in pairs:
            if name in values:
                raise Unprocessable(f"{name} is given more than once", field=name)
            values[name] = value
        check_json_document(values)
        try:
            return self.body_model.model_validate(values)
        except ValidationError as exc:
            raise Unprocessable("request body is invalid", errors=validation_errors(exc)) from exc

    def handle_request(self, request):
        started = time.perf_counter()
        # One id per request, from the caller (a gateway's X-Request-Id) or made here: it
        # goes into the audit log and back to the caller.
        supplied = request.headers.get("X-Request-Id", "")
        request.request_id = supplied if re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", supplied) else str(uuid.uuid4())
        request.principal = None
        response = super().handle_request(request)
        response.headers["X-Request-Id"] = request.request_id
        metrics.HTTP_LATENCY.labels(self.container.service_name, request.method, self.url,
                                    str(response.status_code)).observe(time.perf_counter() - started)
        return response

    def response_from_result(self, result):
        if isinstance(result, Response):
            return result
        status, headers = self.status, None
        if isinstance(result, tuple):
            if len(result) == 3:
                status, headers, result = result
            else:
                status, result = result
        if isinstance(result, str) and self.raw:
            return Response(result, status=status, headers=headers)
        return json_response(result, status=status, headers=headers)

    def response_from_exception(self, exc):
        if isinstance(exc, DomainError):
            status = exc.status
            # An unknown id in the body is a bad body, not a missing resource.
            if isinstance(exc, UnknownReference) and exc.field not in self._path_fields:
                status = 422
            return error_response(status, exc.code, exc.reason, [{"field": exc.field, "reason": exc.reason}])
        if isinstance(exc, Unauthenticated):
            response = error_response(401, "unauthenticated", exc.reason,
                                      [{"field": "Authorization", "reason": exc.reason}])
            response.headers["WWW-Authenticate"] = 'Bearer realm="chuangwei"'
            return response
        if isinstance(exc, ChecklistLookupError):
            return error_response(404, "not_found", str(exc))
        if isinstance(exc, ApiError):
            return error_response(exc.status, exc.code, exc.message, exc.errors)
        if isinstance(exc, ValidationError):
            return error_response(422, "validation_error", "invalid data", validation_errors(exc))
        if isinstance(exc, HTTPException):
            return error_response(exc.code or 400, "http_error", exc.description or str(exc))
        if isinstance(exc, (NamekoBadRequest, TypeError)) and "signature" in str(exc).lower():
            return error_response(400, "bad_request", str(exc))
        dependency = unavailable_dependency(exc)
        if dependency is not None:  # down, not broken: tell the client when to come back
            log_unavailable(self.container.service_name, dependency, exc)
            response = error_response(503, "service_unavailable",
                                      f"服务暂时不可用（{dependency} unavailable），请稍后重试")
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        log.exception("unhandled error in %s %s", self.method, self.url, exc_info=exc)
        return error_response(500, "internal_error", "internal error; the operator's log has details")


api = JsonApi.decorator

