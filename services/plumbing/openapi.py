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


def build_openapi(routes: list[ApiRoute], title: str = "Chuangwei 创卫 API", version: str = "0.1.0") -> dict:
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict] = {}
    for route in sorted(routes, key=lambda r: (r.url, r.method)):
        path = re.sub(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", r"{\1}", route.url)
        for method in route.method.split(","):
            op: dict[str, Any] = {
                "summary": route.summary or f"{method} {path}",
                "tags": route.tags,
                "operationId": f"{route.service}_{method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', path).strip('_')}",
                "responses": {
                    str(route.status): {"description": "OK", "content": {"application/json": {
                        "schema": _schema_ref(route.response, components) or {"type": "object"}}}},
                    "4XX": {"description": "client error naming the field and the reason",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                },
            }
            if route.description:
                op["description"] = route.description
            params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in re.findall(r"{([a-zA-Z_]+)}", path)]
            if route.query is not None:
                for name, field in route.query.model_fields.items():
                    params.append({"name": name, "in": "query", "required": field.is_required(),
                                   "description": field.description or "",
                                   "schema": TypeAdapter(field.annotation).json_schema()})
            if params:
                op["parameters"] = params
            if route.body is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": _schema_ref(route.body, components)}}}
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "创卫工作平台接口：检查、评分排名、整改销号、通报。"},
        "paths": paths,
        "components": {"schemas": components},
    }
