"""``GET /v1/models``: the served endpoints, as the hosted platform's model search lists them.

Three modes in one route, as there: list (no filter), find (``endpoint_id=``, repeatable)
and search (``q=`` words matched in the id, name, description, category and tags;
``category=``; ``status=``). ``expand=openapi-3.0`` adds each endpoint's OpenAPI document.
Pages of ``limit`` (default 50, at most 100) in endpoint id order; ``next_cursor`` continues
after the page (pass it back as ``cursor``). Catalog endpoints carry their page's name,
category, description and tags; other apps a category read from their id and output, and
their docstring. ``runs_on`` says where each one runs (``openfal.upstream.placement``).
"""

from __future__ import annotations

import functools
import inspect
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NotRequired

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from openfal.app.app import App, EndpointSpec
from openfal.app.registry import ServedApp
from openfal.app.schema import endpoint_openapi
from openfal.catalog import ENDPOINTS
from openfal.gateway.hosts import queue_prefix
from openfal.gateway.http import json_response, read_query
from openfal.gateway.intake import resolve_endpoint
from openfal.gateway.urls import base_url
from openfal.server import Platform
from openfal.upstream.placement import where_it_runs

OPENAPI_EXPANSION = "openapi-3.0"
# Categories an endpoint id names, checked in this order (the catalog's rule 3).
_ID_CATEGORIES = [("video-to-audio", "video-to-audio"), ("to-3d", "image-to-3d"),
                  ("inpaint", "inpaint"), ("text-to-video", "text-to-video"),
                  ("image-to-video", "image-to-video"), ("video-to-video", "video-to-video"),
                  ("text-to-image", "text-to-image"), ("image-to-image", "image-to-image"),
                  ("trainer", "training"), ("lipsync", "lipsync")]
_LISTS = {"endpoint_id", "expand"}  # repeatable parameters


class ModelsQuery(BaseModel):
    """The query string; unknown parameters are ignored."""

    limit: int = Field(default=50, ge=1, le=100, description="Models per page.")
    cursor: str | None = Field(default=None, description="The previous page's next_cursor.")
    endpoint_id: list[str] = Field(default=[], description="Only these endpoint ids.")
    q: str | None = Field(default=None, description="Words that must all appear.")
    category: str | None = Field(default=None, description="text-to-image, training, ...")
    status: Literal["active", "deprecated"] | None = None
    expand: list[Literal["openapi-3.0"]] = Field(default=[])

    @classmethod
    def parse(cls, request: Request) -> ModelsQuery:
        return read_query(request, cls, _LISTS)


class ModelMetadata(TypedDict):
    display_name: str
    category: str
    description: str
    status: Literal["active"]
    tags: list[str]
    updated_at: str
    thumbnail_url: None
    model_url: str
    kind: Literal["inference", "training"]
    supports_streaming: bool


class Model(TypedDict):
    endpoint_id: str
    metadata: ModelMetadata
    runs_on: dict[str, Any]
    openapi: NotRequired[dict[str, Any]]


class ModelListing(TypedDict):
    models: list[Model]
    next_cursor: str | None
    has_more: bool


async def list_models(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    query = ModelsQuery.parse(request)
    models = sorted((_model(request, platform, app, path, spec)
                     for app in platform.registry.apps.values()
                     for path, spec in app.cls.endpoints().items()),
                    key=lambda model: model["endpoint_id"])
    chosen = [model for model in models if _matches(query, model)]
    if query.cursor is not None:
        chosen = [model for model in chosen if model["endpoint_id"] > query.cursor]
    page, has_more = chosen[:query.limit], len(chosen) > query.limit
    if OPENAPI_EXPANSION in query.expand:
        for model in page:
            model["openapi"] = _openapi(request, platform, model["endpoint_id"])
    listing: ModelListing = {"models": page, "has_more": has_more,
                             "next_cursor": page[-1]["endpoint_id"] if has_more else None}
    return json_response(listing)


def _matches(query: ModelsQuery, model: Model) -> bool:
    endpoint_id, metadata = model["endpoint_id"], model["metadata"]
    if query.endpoint_id and endpoint_id not in query.endpoint_id:
        return False
    if query.category is not None and metadata["category"] != query.category:
        return False
    if query.status is not None and metadata["status"] != query.status:
        return False
    if query.q is None:
        return True
    text = " ".join([endpoint_id, metadata["display_name"], metadata["description"],
                     metadata["category"], *metadata["tags"]]).lower()
    return all(word in text for word in query.q.lower().split())


def _model(request: Request, platform: Platform, app: ServedApp, path: str,
           spec: EndpointSpec) -> Model:
    endpoint_id = app.endpoint_id(path)
    return {"endpoint_id": endpoint_id, "metadata": _metadata(request, endpoint_id, app, spec),
            "runs_on": where_it_runs(platform, app.cls, endpoint_id)}


def _openapi(request: Request, platform: Platform, endpoint_id: str) -> dict[str, Any]:
    """The document ``/api/openapi/queue/openapi.json?endpoint_id=`` answers with."""
    app, spec = resolve_endpoint(platform, endpoint_id)
    return endpoint_openapi(endpoint_id, app.app_id, spec,
                            base_url(request) + queue_prefix(request.scope))


def _metadata(request: Request, endpoint_id: str, app: ServedApp,
              spec: EndpointSpec) -> ModelMetadata:
    page = ENDPOINTS.get(endpoint_id)
    if page is not None:
        name, category, description = page.title, page.category, page.description
        tags, streaming = list(page.tags), page.supports_streaming
    else:
        name, category, description = None, guess_category(endpoint_id, spec), _doc(app.cls)
        tags, streaming = [], False
    return {"display_name": name or endpoint_id.split("/", 1)[1], "category": category,
            "description": description, "status": "active", "tags": tags,
            "updated_at": _updated_at(app.cls), "thumbnail_url": None,
            "model_url": f"{base_url(request)}/{endpoint_id}",
            "kind": "training" if category == "training" else "inference",
            "supports_streaming": streaming}


def guess_category(endpoint_id: str, spec: EndpointSpec) -> str:
    """A category for an endpoint without a page: from its id, else from what it takes and
    returns (images out: text- or image-to-image, ...), else ``other``."""
    for token, category in _ID_CATEGORIES:
        if token in endpoint_id:
            return category
    outputs = _field_names(spec.output_model)
    takes = "image" if any(re.search(r"image_urls?$", name)
                           for name in _field_names(spec.input_model)) else "text"
    for produced, category in (("image", f"{takes}-to-image"), ("video", f"{takes}-to-video"),
                               ("audio", "text-to-audio")):
        if any(name.startswith(produced) for name in outputs):
            return category
    return "other"


def _field_names(model: Any) -> list[str]:
    return list(model.model_fields) if inspect.isclass(model) and issubclass(
        model, BaseModel) else []


def _doc(cls: type[App]) -> str:
    """The app's own docstring, else its module's; the first paragraph."""
    module = inspect.getmodule(cls)
    doc = cls.__doc__ or (module.__doc__ if module is not None else None) or ""
    return inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ")


@functools.cache
def _updated_at(cls: type[App]) -> str:
    """When the app's source file last changed."""
    try:
        changed = Path(inspect.getfile(cls)).stat().st_mtime
    except (OSError, TypeError):
        changed = datetime.now(UTC).timestamp()
    return datetime.fromtimestamp(changed, UTC).isoformat()
