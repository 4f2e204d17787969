"""Per-endpoint OpenAPI documents, in the shape of the hosted platform's queue specs.

Each document describes one endpoint id: queue submit with the endpoint's input, the
status/cancel routes, and the result with the endpoint's output. Every ``$ref`` points into
``components/schemas``; each object schema carries ``x-fal-order-properties`` so tools that
sort keys can restore the declaration order.

The whole-server document (``gateway/openapi_routes.py``) is built from the same parts:
``json_schemas`` renders every type a document names in one pass, and the operation builders
describe an endpoint's run, submit and queued-request routes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field, TypeAdapter
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from openfal.app.app import EndpointSpec

REF_TEMPLATE = "#/components/schemas/{model}"

Mode = Literal["validation", "serialization"]
Schema = dict[str, Any]
TypeTable = Mapping[Hashable, tuple[Any, Mode]]


class QueueStatus(TypedDict):
    """Where a queued request stands."""

    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: Annotated[str, Field(description="The request id.")]
    response_url: NotRequired[Annotated[str, Field(description="The URL of the result.")]]
    status_url: NotRequired[Annotated[str, Field(description="The URL of the status.")]]
    cancel_url: NotRequired[Annotated[str, Field(
        description="The URL to cancel the request.")]]
    queue_position: NotRequired[Annotated[int, Field(description="0-based, while IN_QUEUE.")]]
    logs: NotRequired[list[dict[str, Any]] | None]
    metrics: NotRequired[dict[str, Any]]
    progress: NotRequired[dict[str, Any]]
    error: NotRequired[str | None]
    error_type: NotRequired[str | None]


class CancelStatus(TypedDict):
    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED"]


class ErrorResponse(TypedDict):
    """What went wrong, and its kind (also in the ``X-Fal-Error-Type`` header)."""

    detail: str
    error_type: NotRequired[str]


class ValidationErrorItem(TypedDict):
    """One problem with the request, at ``loc`` (``["body", "prompt"]``, ``["query", ...]``)."""

    loc: list[str | int]
    msg: str
    type: str


class HTTPValidationError(TypedDict):
    detail: list[ValidationErrorItem]


QUEUE_TYPES: dict[Hashable, tuple[Any, Mode]] = {
    "queue_status": (QueueStatus, "serialization"),
    "cancel_status": (CancelStatus, "serialization"),
    "error": (ErrorResponse, "serialization"),
    "validation_error": (HTTPValidationError, "serialization"),
}

ERROR_DESCRIPTIONS = {
    400: "The request has not finished.",
    401: "The API key is missing, malformed, unknown or revoked.",
    403: "The route needs an ADMIN key.",
    404: "Not found.",
    413: "The body is larger than the server's limit.",
    422: "The input failed validation; each item locates one problem.",
    429: "The queue is full, or the key has as many requests running as it may.",
    499: "The request was cancelled.",
    504: "The request did not start within its X-Fal-Request-Timeout, or did not end "
         "within its app's request_timeout.",
}

_REQUEST_ID = {"name": "request_id", "in": "path", "required": True,
               "schema": {"type": "string"}}
_LOGS = {"name": "logs", "in": "query", "required": False, "schema": {"type": "boolean"},
         "description": "Include the request's log lines."}
_JOB_HEADERS = [
    {"name": "X-Fal-Request-Timeout", "in": "header", "required": False,
     "schema": {"type": "number", "exclusiveMinimum": 0},
     "description": "Seconds the request may wait to start; then it fails with a 504."},
    {"name": "X-Fal-Queue-Priority", "in": "header", "required": False,
     "schema": {"type": "string", "enum": ["normal", "low"]}},
    {"name": "X-Fal-No-Retry", "in": "header", "required": False,
     "schema": {"type": "string"}, "description": "1, true or yes: never retry it."},
    {"name": "X-Fal-Runner-Hint", "in": "header", "required": False,
     "schema": {"type": "string"}, "description": "Prefer a runner that provides this hint."},
]
_MAX_QUEUE_LENGTH = {
    "name": "fal_max_queue_length", "in": "query", "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "Refuse (429) when the app's queue is already this long."}


@dataclass(frozen=True)
class QueueSchemas:
    """The platform's own response schemas, as rendered by a document's ``json_schemas``."""

    status: Schema
    cancel: Schema
    error: Schema
    validation_error: Schema

    @classmethod
    def pick(cls, schemas: Mapping[Hashable, Schema]) -> QueueSchemas:
        return cls(schemas["queue_status"], schemas["cancel_status"], schemas["error"],
                   schemas["validation_error"])


def json_schemas(types: TypeTable) -> tuple[dict[Hashable, Schema], dict[str, Schema]]:
    """The JSON schema of each type, and the component schemas they refer to. All the types
    of a document go through one pass, so two models that share a name get distinct
    components."""
    adapters = [(key, mode, TypeAdapter(type_)) for key, (type_, mode) in types.items()]
    refs, defs = TypeAdapter.json_schemas(adapters, ref_template=REF_TEMPLATE)
    components: dict[str, Schema] = defs.get("$defs", {})
    for schema in components.values():
        _add_order(schema)
    return {key: refs[(key, mode)] for key, (_, mode) in types.items()}, components


def endpoint_types(endpoint_id: str, spec: EndpointSpec) -> dict[Hashable, tuple[Any, Mode]]:
    """An endpoint's input (as validated) and output (as serialized), keyed
    ``("input", endpoint_id)`` and ``("output", endpoint_id)``."""
    input_type = spec.input_model if spec.input_model is not None else dict[str, Any]
    output_type = spec.output_model if spec.output_model is not None else Any
    return {("input", endpoint_id): (input_type, "validation"),
            ("output", endpoint_id): (output_type, "serialization")}


def _add_order(schema: Schema) -> None:
    if isinstance(schema.get("properties"), dict):
        schema["x-fal-order-properties"] = list(schema["properties"])


def json_content(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_responses(queue: QueueSchemas, *statuses: int) -> dict[str, Schema]:
    return {str(status): json_content(
        queue.validation_error if status == 422 else queue.error, ERROR_DESCRIPTIONS[status])
        for status in statuses}


def _outcome_responses(output_schema: Schema, queue: QueueSchemas,
                       *statuses: int) -> dict[str, Schema]:
    """A request's outcome as its caller gets it: the result, or the failure its endpoint
    answered with (``AppException``: any status) or its runner met."""
    return {"200": json_content(output_schema, "The result."),
            **error_responses(queue, *statuses),
            "default": json_content(queue.error, "The request failed: its endpoint's error, "
                                                 "or its runner's.")}


def _input_body(spec: EndpointSpec, input_schema: Schema) -> Schema:
    """An empty body is read as ``{}``: enough for an input without required fields."""
    model = spec.input_model
    required = model is not None and any(
        field.is_required() for field in model.model_fields.values())
    return {"required": required, "content": {"application/json": {"schema": input_schema}}}


def submit_operation(endpoint_id: str, spec: EndpointSpec, input_schema: Schema,
                     queue: QueueSchemas) -> Schema:
    """Queue submit: the request is stored, and its status is the answer."""
    return {"summary": f"Submit a request to {endpoint_id}",
            "parameters": [_MAX_QUEUE_LENGTH, *_JOB_HEADERS],
            "requestBody": _input_body(spec, input_schema),
            "responses": {"200": json_content(queue.status, "The request is queued."),
                          **error_responses(queue, 404, 413, 422, 429)}}


def run_operation(endpoint_id: str, spec: EndpointSpec, input_schema: Schema,
                  output_schema: Schema, queue: QueueSchemas) -> Schema:
    """Direct run: the answer is the endpoint's result."""
    return {"summary": f"Run {endpoint_id} and answer with its result",
            "parameters": [*_JOB_HEADERS],
            "requestBody": _input_body(spec, input_schema),
            "responses": _outcome_responses(output_schema, queue, 404, 413, 422, 429, 504)}


def request_operations(output_schema: Schema, queue: QueueSchemas) -> dict[str, Schema]:
    """The routes of one queued request, by what follows ``.../requests/{request_id}``."""
    return {
        "/status": {"get": {
            "parameters": [_REQUEST_ID, _LOGS],
            "responses": {"200": json_content(queue.status, "Done."),
                          "202": json_content(queue.status, "Still queued or running."),
                          **error_responses(queue, 404)},
        }},
        "/cancel": {"put": {
            "parameters": [_REQUEST_ID],
            "responses": {"202": json_content(queue.cancel, "Cancellation requested."),
                          "400": json_content(queue.cancel, "Already completed."),
                          **error_responses(queue, 404)},
        }},
        "": {"get": {
            "parameters": [_REQUEST_ID],
            "responses": _outcome_responses(output_schema, queue, 400, 404, 422, 499, 504),
        }},
    }


def status_stream_operation(queue: QueueSchemas) -> Schema:
    """Server-sent events: the status object at each change, until COMPLETED."""
    event = {"type": "object", "required": ["data"], "properties": {"data": {
        "type": "string", "contentMediaType": "application/json",
        "contentSchema": queue.status}}}
    return {"parameters": [_REQUEST_ID, _LOGS],
            "responses": {"200": {"description": "One status object per event.",
                                  "content": {"text/event-stream": {"schema": event}}},
                          **error_responses(queue, 404)}}


def endpoint_openapi(endpoint_id: str, app_id: str, spec: EndpointSpec,
                     server_url: str) -> dict[str, Any]:
    schemas, components = json_schemas({**QUEUE_TYPES, **endpoint_types(endpoint_id, spec)})
    queue = QueueSchemas.pick(schemas)
    input_schema, output_schema = schemas[("input", endpoint_id)], schemas[("output", endpoint_id)]
    by_id = f"/{app_id}/requests/{{request_id}}"
    paths = {f"/{endpoint_id}": {"post": submit_operation(endpoint_id, spec, input_schema,
                                                          queue)},
             **{by_id + suffix: item
                for suffix, item in request_operations(output_schema, queue).items()}}
    return {
        "openapi": "3.1.0",
        "info": {"title": endpoint_id, "version": "1.0.0",
                 "x-fal-metadata": {"endpointId": endpoint_id}},
        "servers": [{"url": server_url}],
        "paths": paths,
        "x-fal-order-paths": list(paths),
        "components": {"schemas": components},
    }
