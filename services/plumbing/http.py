"""One HTTP layer for every service: JSON in and out, one error handler, API registry.

Entrypoints declare their request and response models; the body is parsed and validated
before the worker runs, so a bad request never reaches the service and changes nothing.
Every error is JSON: {"error": code, "message": ..., "errors": [{"field", "reason"}]}.
"""
from __future__ import annotations

import json
import re
import logging
import time
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
from services.contracts.errors import DomainError, UnknownReference
from services.plumbing import metrics

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1_000_000


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
    body = json.dumps(payload, ensure_ascii=False, default=str)
    return Response(body, status=status, headers=headers, content_type="application/json; charset=utf-8")


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


# Routes of every service started in this process, for the OpenAPI document.
ROUTES: dict[tuple[str, str, str], ApiRoute] = {}


class JsonWsgiApp(WsgiApp):
    """nameko's WSGI app, but an unknown path or method gets the same JSON error as the rest."""

    def __call__(self, environ, start_response):
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

    def __init__(self, method, url, body: Type[BaseModel] | None = None, response: Any = None,
                 status: int = 200, query: Type[BaseModel] | None = None, summary: str = "",
                 description: str = "", tags: list[str] | None = None, raw: bool = False, **kwargs):
        self.body_model = body
        self.response_model = response
        self.status = status
        self.query_model = query
        self.summary = summary
        self.description = description
        self.tags = tags or []
        self.raw = raw
        # Client errors are expected: nameko then logs them as warnings, not as crashes.
        kwargs.setdefault("expected_exceptions", (DomainError, ApiError, ValidationError, ChecklistLookupError))
        super().__init__(method, url, **kwargs)

    @property
    def _path_fields(self) -> set[str]:
        return set(re.findall(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", self.url))

    def setup(self):
        super().setup()
        service = self.container.service_name
        self.max_body = int(self.container.config.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
        if not self.raw:
            ROUTES[(service, self.method, self.url)] = ApiRoute(
                service, self.method, self.url, self.summary, self.body_model, self.response_model,
                self.status, self.query_model, self.tags or [service], self.description)

    def get_entrypoint_parameters(self, request):
        args, kwargs = super().get_entrypoint_parameters(request)
        kwargs = dict(kwargs)
        if self.body_model is not None:
            kwargs["body"] = self._read_body(request)
        if self.query_model is not None:
            try:
                kwargs["query"] = self.query_model.model_validate(request.args.to_dict())
            except ValidationError as exc:
                raise Unprocessable("invalid query parameters", errors=validation_errors(exc, "query.")) from exc
        return args, kwargs

    def _read_body(self, request) -> BaseModel:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise ApiError(f"request body of {length} bytes exceeds the limit of {self.max_body}",
                           field="body", status=413, code="payload_too_large")
        raw = request.get_data(cache=True)
        if len(raw) > self.max_body:
            raise ApiError(f"request body exceeds the limit of {self.max_body} bytes",
                           field="body", status=413, code="payload_too_large")
        if not raw:
            raise ApiError("request body is empty; a JSON object is required", field="body",
                           code="malformed_json")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(f"malformed JSON: {exc}", field="body", code="malformed_json") from exc
        try:
            return self.body_model.model_validate(data)
        except ValidationError as exc:
            raise Unprocessable("request body is invalid", errors=validation_errors(exc)) from exc

    def handle_request(self, request):
        started = time.perf_counter()
        response = super().handle_request(request)
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
        log.exception("unhandled error in %s %s", self.method, self.url, exc_info=exc)
        return error_response(500, "internal_error", "internal error; the operator's log has details")


api = JsonApi.decorator

