"""Per-endpoint OpenAPI documents, in the shape of the hosted platform's queue specs.

Each document describes one endpoint id: queue submit with the endpoint's input, the
status/cancel routes, and the result with the endpoint's output. Every ``$ref`` points into
``components/schemas``; each object schema carries ``x-fal-order-properties`` so tools that
sort keys can restore the declaration order.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from openfal.app.app import EndpointSpec

REF_TEMPLATE = "#/components/schemas/{model}"

_QUEUE_STATUS = {
    "type": "object",
    "title": "QueueStatus",
    "required": ["status", "request_id"],
    "properties": {
        "status": {"type": "string", "enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]},
        "request_id": {"type": "string", "description": "The request id."},
        "response_url": {"type": "string", "description": "The URL of the result."},
        "status_url": {"type": "string", "description": "The URL of the status."},
        "cancel_url": {"type": "string", "description": "The URL to cancel the request."},
        "queue_position": {"type": "integer", "description": "0-based, while IN_QUEUE."},
        "logs": {"type": ["array", "null"], "items": {"type": "object"}},
        "metrics": {"type": "object"},
        "error": {"type": ["string", "null"]},
        "error_type": {"type": ["string", "null"]},
    },
}


def _model_schemas(spec: EndpointSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(input schema, output schema, component schemas) for an endpoint."""
    components: dict[str, Any] = {}
    input_schema: dict[str, Any] = {"type": "object", "properties": {}}
    models: list[tuple[type[BaseModel], str]] = []
    if spec.input_model is not None:
        models.append((spec.input_model, "validation"))
    output = spec.output_model
    output_is_model = isinstance(output, type) and issubclass(output, BaseModel)
    if output_is_model:
        models.append((output, "serialization"))
    if models:
        refs, defs = models_json_schema(models, ref_template=REF_TEMPLATE)
        components.update(defs.get("$defs", {}))
        if spec.input_model is not None:
            input_schema = refs[(spec.input_model, "validation")]
    if output_is_model:
        output_schema = refs[(output, "serialization")]
    elif output is None or output is Any:
        output_schema = {}
    else:
        output_schema = TypeAdapter(output).json_schema(ref_template=REF_TEMPLATE)
    for schema in components.values():
        _add_order(schema)
    return input_schema, output_schema, components


def _add_order(schema: dict[str, Any]) -> None:
    if isinstance(schema.get("properties"), dict):
        schema["x-fal-order-properties"] = list(schema["properties"])


def endpoint_openapi(endpoint_id: str, app_id: str, spec: EndpointSpec,
                     server_url: str) -> dict[str, Any]:
    input_schema, output_schema, components = _model_schemas(spec)
    components["QueueStatus"] = _QUEUE_STATUS
    request_id = {"name": "request_id", "in": "path", "required": True,
                  "schema": {"type": "string"}}
    status_ref = {"$ref": "#/components/schemas/QueueStatus"}

    def json_response(schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    paths = {
        f"/{endpoint_id}": {"post": {
            "summary": f"Submit a request to {endpoint_id}",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": input_schema}}},
            "responses": {"200": json_response(status_ref, "The request is queued.")},
        }},
        f"/{app_id}/requests/{{request_id}}/status": {"get": {
            "parameters": [request_id, {"name": "logs", "in": "query", "required": False,
                                        "schema": {"type": "boolean"}}],
            "responses": {"200": json_response(status_ref, "Done."),
                          "202": json_response(status_ref, "Still queued or running.")},
        }},
        f"/{app_id}/requests/{{request_id}}/cancel": {"put": {
            "parameters": [request_id],
            "responses": {"202": json_response(status_ref, "Cancellation requested."),
                          "400": json_response(status_ref, "Already completed.")},
        }},
        f"/{app_id}/requests/{{request_id}}": {"get": {
            "parameters": [request_id],
            "responses": {"200": json_response(output_schema, "The result.")},
        }},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": endpoint_id, "version": "1.0.0",
                 "x-fal-metadata": {"endpointId": endpoint_id}},
        "servers": [{"url": server_url}],
        "paths": paths,
        "x-fal-order-paths": list(paths),
        "components": {"schemas": components},
    }
