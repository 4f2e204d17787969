"""``GET /openapi.json``: the whole server as one OpenAPI 3.1 document.

It lists every served endpoint id's direct run (``POST /{endpoint_id}``) and queue submit
(``POST /queue/{endpoint_id}``), each app's queued-request routes, and the platform's JSON
routes, with request and response schemas. The endpoint parts come from ``app/schema.py``,
the builders of the per-endpoint documents; every type goes through one pydantic pass, so
each ``$ref`` resolves into ``components/schemas``. Which operations need the ``Key``
scheme is read from the routing table: each documented path is matched against the routes,
and the route's access level decides, so the document cannot disagree with the guards.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from openfal import __version__
from openfal.app.registry import ServedApp
from openfal.app.schema import (
    QUEUE_TYPES,
    Mode,
    QueueSchemas,
    Schema,
    endpoint_types,
    error_responses,
    json_content,
    json_schemas,
    request_operations,
    run_operation,
    status_stream_operation,
    submit_operation,
)
from openfal.auth.keys import Scope
from openfal.files.lifecycle import LifecyclePreference
from openfal.gateway.auth import Access
from openfal.gateway.hosts import QUEUE_PREFIX
from openfal.gateway.http import json_response
from openfal.gateway.key_routes import KeyUpdate, NewKey
from openfal.gateway.models_api import ModelListing, ModelsQuery
from openfal.gateway.secret_routes import SecretValue
from openfal.gateway.storage_routes import InitiateBody
from openfal.gateway.tokens import TokenRequest
from openfal.gateway.urls import base_url
from openfal.secrets import NAME_PATTERN as SECRET_NAME_PATTERN
from openfal.server import Platform
from openfal.store.base import UsageRow
from openfal.worker.runners import RunnerState

SECURITY_SCHEME = "Key"
_KEY_REQUIRED: list[dict[str, list[str]]] = [{SECURITY_SCHEME: []}]
_KEY_OPTIONAL: list[dict[str, list[str]]] = [{SECURITY_SCHEME: []}, {}]
_PATH_PARAMETER = re.compile(r"\{[^}]+\}")


# The platform routes' answers, as the handlers build them.
class Health(TypedDict):
    status: Literal["ok"]
    version: str


class AppConfig(TypedDict):
    machine_type: str | list[str]
    keep_alive: float
    min_concurrency: int
    max_concurrency: int
    max_multiplexing: int
    request_timeout: float
    startup_timeout: float


class AppEndpoint(TypedDict):
    endpoint_id: str
    app_id: str
    path: str
    app_ref: str
    is_async: bool
    openapi_url: str
    config: AppConfig


class AppListing(TypedDict):
    endpoints: list[AppEndpoint]


class Runner(TypedDict):
    runner_id: str
    app_id: str
    state: RunnerState
    pid: int | None
    in_flight: list[str]
    started_at: float | None
    hints: list[str]
    gpus: list[str]  # its devices (CUDA_VISIBLE_DEVICES) on a worker run with --gpus


class RunnerTemplate(TypedDict):
    python: str
    pid: int | None
    state: Literal["starting", "ready", "unused"]
    preload: list[str]  # the apps' runtime_modules
    first_runner_modules: int  # library modules of its first runner's, imported too


class RunnerListing(TypedDict):
    runners: list[Runner]
    templates: list[RunnerTemplate]  # worker/templates.py
    waiting_direct_by_key: dict[str, int]


class Attempt(TypedDict):
    request_id: str
    attempt: int
    attempt_id: str
    runner_id: str
    started_at: float
    finished_at: float | None
    outcome: str | None
    error_type: str | None


class AttemptListing(TypedDict):
    attempts: list[Attempt]


class ApiKey(TypedDict):
    id: str
    scope: Scope
    name: str
    created_at: float
    revoked_at: float | None
    max_concurrency: int | None


class CreatedKey(ApiKey):
    key: Annotated[str, Field(description="`<key_id>:<key_secret>`, shown only this once.")]


class KeyListing(TypedDict):
    keys: list[ApiKey]


class KeyUpdated(TypedDict):
    status: Literal["updated"]


class KeyRevoked(TypedDict):
    status: Literal["revoked"]


class SecretSet(TypedDict):
    name: str
    updated_at: float


class SecretListing(TypedDict):
    secrets: list[SecretSet]


class SecretDeleted(TypedDict):
    name: str
    status: Literal["deleted"]


class Usage(TypedDict):
    since: float
    until: float
    usage: list[UsageRow]


class SignedUpload(TypedDict):
    upload_url: str
    file_url: str


class StorageToken(TypedDict):
    token: str
    token_type: Literal["Bearer"]
    base_url: str
    expires_at: datetime


class OpenAPIDocument(TypedDict):
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    servers: NotRequired[list[dict[str, Any]]]
    components: NotRequired[dict[str, Any]]


_V: Mode = "validation"
_S: Mode = "serialization"
PLATFORM_TYPES: dict[Hashable, tuple[Any, Mode]] = {
    "health": (Health, _S), "apps": (AppListing, _S), "runners": (RunnerListing, _S),
    "attempts": (AttemptListing, _S), "document": (OpenAPIDocument, _S),
    "keys": (KeyListing, _S), "new_key": (NewKey, _V), "created_key": (CreatedKey, _S),
    "key_update": (KeyUpdate, _V), "key_updated": (KeyUpdated, _S),
    "key_revoked": (KeyRevoked, _S), "usage": (Usage, _S),
    "secrets": (SecretListing, _S), "secret_value": (SecretValue, _V),
    "secret_set": (SecretSet, _S), "secret_deleted": (SecretDeleted, _S),
    "token_request": (TokenRequest, _V), "token": (str, _S),
    "initiate": (InitiateBody, _V), "signed_upload": (SignedUpload, _S),
    "storage_token": (StorageToken, _S), "models": (ModelListing, _S),
    # The lifecycle header's JSON, as files/lifecycle.py validates it.
    "lifecycle": (LifecyclePreference, _V),
}


class ServerDocument:
    """The route handler; ``access`` is the routing table's ``(path, method) -> Access``."""

    def __init__(self, access: Mapping[tuple[str, str], Access]):
        self.access = access

    async def __call__(self, request: Request) -> Response:
        return json_response(self.document(request))

    def document(self, request: Request) -> Schema:
        platform: Platform = request.app.state.platform
        apps = list(platform.registry.apps.values())
        types = {**QUEUE_TYPES, **PLATFORM_TYPES}
        for app in apps:
            for path, spec in app.cls.endpoints().items():
                types.update(endpoint_types(app.endpoint_id(path), spec))
        schemas, components = json_schemas(types)
        queue = QueueSchemas.pick(schemas)
        paths = {**_platform_paths(schemas, queue), **_endpoint_paths(apps, schemas, queue)}
        if platform.settings.auth:
            keyed = {path for app in apps if app.cls.app_auth != "public"
                     for endpoint_id in app.endpoint_ids() for path in _call_paths(endpoint_id)}
            self._secure(paths, request.app.routes, keyed, queue)
        return {
            "openapi": "3.1.0",
            "info": {"title": "openfal", "version": __version__},
            "servers": [{"url": base_url(request)}],
            "paths": paths,
            "components": {"schemas": components, "securitySchemes": {SECURITY_SCHEME: {
                "type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Key <key_id>:<key_secret>`"}}},
        }

    def _secure(self, paths: dict[str, Schema], routes: Iterable[BaseRoute],
                keyed: set[str], queue: QueueSchemas) -> None:
        """Mark each operation with the key it needs, as its route's guard decides. A
        CALLER route needs one to call a private app; elsewhere a key is optional."""
        routes = list(routes)
        for path, item in paths.items():
            for method, operation in item.items():
                access = self._route_access(routes, path, method.upper())
                if access is Access.PUBLIC:
                    continue
                required = access is not Access.CALLER or path in keyed
                operation["security"] = _KEY_REQUIRED if required else _KEY_OPTIONAL
                operation["responses"].update(error_responses(queue, 401))
                if access is Access.ADMIN:
                    operation["responses"].update(error_responses(queue, 403))

    def _route_access(self, routes: list[BaseRoute], path: str, method: str) -> Access:
        scope = {"type": "http", "method": method, "path": _PATH_PARAMETER.sub("x", path)}
        for route in routes:
            if isinstance(route, Route) and route.matches(scope)[0] is Match.FULL:
                return self.access[(route.path, method)]
        raise LookupError(f"no route serves {method} {path}")


def _call_paths(endpoint_id: str) -> tuple[str, str]:
    """Where an endpoint is run, and where it is queued."""
    return f"/{endpoint_id}", f"{QUEUE_PREFIX}/{endpoint_id}"


def _endpoint_paths(apps: list[ServedApp], schemas: Mapping[Hashable, Schema],
                    queue: QueueSchemas) -> dict[str, Schema]:
    """Run and submit for each endpoint; each app's queued-request routes, whose result is
    the output of whichever of its endpoints was called."""
    paths: dict[str, Schema] = {}
    for app in apps:
        outputs = []
        for path, spec in app.cls.endpoints().items():
            endpoint_id = app.endpoint_id(path)
            input_schema = schemas[("input", endpoint_id)]
            output_schema = schemas[("output", endpoint_id)]
            outputs.append(output_schema)
            run_path, submit_path = _call_paths(endpoint_id)
            paths[run_path] = {
                "post": run_operation(endpoint_id, spec, input_schema, output_schema, queue)}
            submit = submit_operation(endpoint_id, spec, input_schema, queue)
            submit["responses"]["200"]["links"] = _request_links(app)
            paths[submit_path] = {"post": submit}
        by_id = _by_id(app)
        for suffix, item in request_operations(_any_of(outputs), queue).items():
            paths[by_id + suffix] = item
        paths[by_id + "/status/stream"] = {"get": status_stream_operation(queue)}
    return paths


def _by_id(app: ServedApp) -> str:
    return f"{QUEUE_PREFIX}/{app.app_id}/requests/{{request_id}}"


def _request_links(app: ServedApp) -> Schema:
    """From a submit's answer to the routes of the request it queued."""
    targets = {"status": (_by_id(app) + "/status", "get"), "result": (_by_id(app), "get"),
               "cancel": (_by_id(app) + "/cancel", "put"),
               "attempts": ("/api/requests/{request_id}/attempts", "get")}
    return {name: {"operationRef": _operation_ref(path, method),
                   "parameters": {"request_id": "$response.body#/request_id"}}
            for name, (path, method) in targets.items()}


def _operation_ref(path: str, method: str) -> str:
    """A JSON pointer to the operation: ``~`` and ``/`` escaped in the path."""
    return f"#/paths/{path.replace('~', '~0').replace('/', '~1')}/{method}"


def _any_of(schemas: list[Schema]) -> Schema:
    distinct = [schema for i, schema in enumerate(schemas) if schema not in schemas[:i]]
    if {} in distinct:
        return {}
    return distinct[0] if len(distinct) == 1 else {"anyOf": distinct}


def _operation(summary: str, status: int, answer: Schema, queue: QueueSchemas,
               errors: tuple[int, ...] = (), body: Schema | None = None,
               body_required: bool = False, parameters: list[Schema] | None = None) -> Schema:
    """A platform route; a body it may go without is read as ``{}``."""
    operation: Schema = {"summary": summary}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": body_required,
                                    "content": {"application/json": {"schema": body}}}
    operation["responses"] = {str(status): json_content(answer, "OK."),
                              **error_responses(queue, *errors)}
    return operation


def _parameter(name: str, where: str, schema: Schema, required: bool = False) -> Schema:
    return {"name": name, "in": where, "required": required, "schema": schema}


def _query_parameters(model: type[BaseModel]) -> list[Schema]:
    """The fields of a route's query model as OpenAPI query parameters (lists repeat the
    parameter); ``None`` is how a parameter is left out, not a value."""
    parameters = []
    for name, schema in model.model_json_schema()["properties"].items():
        options = [option for option in schema.get("anyOf", []) if option != {"type": "null"}]
        plain = {key: value for key, value in schema.items()
                 if key not in ("title", "anyOf") and value is not None}
        parameters.append(_parameter(name, "query", {**plain, **(options[0] if options else {})}))
    return parameters


def _platform_paths(s: Mapping[Hashable, Schema], queue: QueueSchemas) -> dict[str, Schema]:
    request_id = [_parameter("request_id", "path", {"type": "string"}, required=True)]
    key_id = [_parameter("key_id", "path", {"type": "string"}, required=True)]
    name = [_parameter("name", "path", {"type": "string", "pattern": SECRET_NAME_PATTERN},
                       required=True)]
    unix_time = {"type": "number"}
    lifecycle = {"name": "X-Fal-Object-Lifecycle-Preference", "in": "header",
                 "required": False, "content": {"application/json": {"schema": s["lifecycle"]}}}
    return {
        "/health": {"get": _operation("Liveness and version", 200, s["health"], queue)},
        "/openapi.json": {"get": _operation("This document", 200, s["document"], queue)},
        "/api/apps": {"get": _operation("The served endpoints", 200, s["apps"], queue)},
        "/api/runners": {"get": _operation("The runners", 200, s["runners"], queue)},
        "/api/requests/{request_id}/attempts": {"get": _operation(
            "Every attempt of a request", 200, s["attempts"], queue, (404,),
            parameters=request_id)},
        "/api/openapi/queue/openapi.json": {"get": _operation(
            "One endpoint's queue document", 200, s["document"], queue, (404, 422),
            parameters=[_parameter("endpoint_id", "query", {"type": "string", "minLength": 1},
                                   required=True)])},
        "/api/keys": {
            "get": _operation("Every API key", 200, s["keys"], queue),
            "post": _operation("Create an API key", 201, s["created_key"], queue,
                               (413, 422), body=s["new_key"]),
        },
        "/api/keys/{key_id}": {
            "patch": _operation("Set a key's concurrency limit", 200, s["key_updated"],
                                queue, (404, 413, 422), body=s["key_update"],
                                body_required=True, parameters=key_id),
            "delete": _operation("Revoke a key", 200, s["key_revoked"], queue, (404,),
                                 parameters=key_id),
        },
        "/api/secrets": {"get": _operation("The app secrets' names (never a value)", 200,
                                           s["secrets"], queue)},
        "/api/secrets/{name}": {
            "put": _operation("Set an app secret", 200, s["secret_set"], queue, (413, 422),
                              body=s["secret_value"], body_required=True, parameters=name),
            "delete": _operation("Remove an app secret", 200, s["secret_deleted"], queue,
                                 (404, 422), parameters=name),
        },
        "/v1/models": {"get": _operation(
            "The served endpoints: list, find (endpoint_id) or search (q, category, status)",
            200, s["models"], queue, (422,), parameters=_query_parameters(ModelsQuery))},
        "/api/usage": {"get": _operation(
            "Finished requests by key and endpoint over [since, until)", 200, s["usage"],
            queue, (422,), parameters=[_parameter("since", "query", unix_time),
                                       _parameter("until", "query", unix_time)])},
        "/tokens/": {"post": _operation("A realtime token (JWT)", 201, s["token"], queue,
                                        (413, 422), body=s["token_request"],
                                        body_required=True)},
        "/storage/upload/initiate": {"post": _operation(
            "Where to PUT a file, and its URL", 200, s["signed_upload"], queue, (413, 422),
            body=s["initiate"], parameters=[lifecycle])},
        "/storage/auth/token": {"post": _operation(
            "A storage (CDN) bearer token", 200, s["storage_token"], queue)},
    }
