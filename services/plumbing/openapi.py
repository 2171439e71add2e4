"""OpenAPI 3.1 document generated from the pydantic models the routes declare."""
from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from services.plumbing.http import ApiRoute

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "examples": ["validation_error"]},
        "message": {"type": "string", "examples": ["request body is invalid"]},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string", "examples": ["items[0].deduction"]},
            "reason": {"type": "string", "examples": ["扣分超过该项分值上限"]}}}},
    },
    "required": ["error", "message", "errors"],
}


def _schema_ref(model: Any, components: dict) -> dict:
    if model is None:
        return {}
    if isinstance(model, type) and issubclass(model, BaseModel):
        _, defs = models_json_schema([(model, "serialization")], ref_template="#/components/schemas/{model}")
        components.update(defs.get("$defs", {}))
        return {"$ref": f"#/components/schemas/{model.__name__}"}
    schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    components.update(schema.pop("$defs", {}))
    return schema


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _success_content(route: ApiRoute, components: dict) -> dict:
    if route.content_type != "application/json":
        binary = not route.content_type.startswith("text/")
        return {route.content_type: {"schema": {"type": "string", "format": "binary"} if binary
                                     else {"type": "string"}}}
    return {"application/json": {"schema": _schema_ref(route.response, components) or {}}}


def _query_schemas(model: type[BaseModel], components: dict) -> dict[str, dict]:
    """Each query parameter's schema with its bounds; shared enums go to the components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
    components.update(schema.pop("$defs", {}))
    return schema.get("properties", {})


def _operation(route: ApiRoute, method: str, path: str, components: dict) -> dict:
    responses: dict[str, Any] = {}
    for status in (route.status, *route.statuses):
        if status == 204:
            responses[str(status)] = {"description": "done, no content"}
        else:
            responses[str(status)] = {"description": "OK", "content": _success_content(route, components)}
    responses["400"] = _error("malformed request (JSON, nesting, path or query text)")
    if not route.access.public:
        responses["401"] = _error("not signed in, or the access token did not verify")
        responses["403"] = _error("the caller lacks the role on the node")
    if route.body is not None:
        responses["413"] = _error("request body too large")
        responses["415"] = _error("Content-Type is not application/json"
                                  + (" nor application/x-www-form-urlencoded" if route.form else ""))
    responses["4XX"] = _error("client error naming the field and the reason")
    op: dict[str, Any] = {
        "summary": route.summary or f"{method} {path}",
        "tags": route.tags,
        "operationId": f"{route.service}_{method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', path).strip('_')}",
        "responses": responses,
    }
    op["security"] = [] if route.access.public else [{"bearerAuth": []}, {"cookieAuth": []}]
    op["x-roles"] = list(route.access.roles)
    description = route.description
    if not route.access.public:
        description = (description + "\n\n" if description else "") + f"Roles: {route.access.describe()}."
    if description:
        op["description"] = description
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
              for name in re.findall(r"{([a-zA-Z_]+)}", path)]
    if route.query is not None:
        schemas = _query_schemas(route.query, components)
        for name, field in route.query.model_fields.items():
            params.append({"name": field.alias or name, "in": "query", "required": field.is_required(),
                           "description": field.description or "",
                           "schema": schemas.get(field.alias or name, {})})
    if params:
        op["parameters"] = params
    if route.body is not None:
        schema = _schema_ref(route.body, components)
        content = {"application/json": {"schema": schema}}
        if route.form:
            content["application/x-www-form-urlencoded"] = {"schema": schema}
        op["requestBody"] = {"required": True, "content": content}
    return op


def build_openapi(routes: list[ApiRoute], title: str = "Chuangwei 创卫 API", version: str = "0.1.0") -> dict:
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict] = {}
    for route in sorted(routes, key=lambda r: (r.url, r.method)):
        path = re.sub(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", r"{\1}", route.url)
        for method in route.method.split(","):
            paths.setdefault(path, {})[method.lower()] = _operation(route, method, path, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "创卫工作平台接口：检查、评分排名、整改销号、通报。"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "short-lived access token from the accounts service"},
                "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "cw_access",
                               "description": "the web console's HttpOnly cookie; writes also need X-CSRF-Token"},
            },
        },
    }
