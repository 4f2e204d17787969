"""The 40 endpoints of the model pages, served under their hosted ids with their schemas.

``schemas/`` holds each endpoint's input and output models (generated once from the catalog
by ``tools/generate_catalog.py``, then maintained by hand); ``pages.json`` each page's title,
description, category, tags and example input. ``ENDPOINTS`` puts them together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pydantic import BaseModel

from openfal.catalog.schemas import MODELS

# Endpoints whose weights are published, so they can run on this machine; the others run at
# an upstream provider.
OPEN_WEIGHTS = frozenset({
    "fal-ai/flux-kontext-lora",
    "fal-ai/flux-kontext-lora/inpaint",
    "fal-ai/flux-kontext-lora/text-to-image",
    "fal-ai/flux-krea-lora/stream",
    "fal-ai/hidream-i1-full",
    "fal-ai/kandinsky5/text-to-video",
    "fal-ai/wan-trainer/t2v",
    "fal-ai/wan-trainer/t2v-14b",
    "fal-ai/wan-trainer/i2v-720p",
})


@dataclass(frozen=True)
class CatalogEndpoint:
    id: str
    title: str | None  # some pages have none
    description: str
    category: str  # text-to-image, image-to-video, training, ...
    tags: tuple[str, ...]
    supports_streaming: bool
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    example_input: dict[str, Any]  # the page's example, as the page writes it
    open_weights: bool


def _load_pages() -> dict[str, dict[str, Any]]:
    return json.loads(resources.files(__package__).joinpath("pages.json").read_text("utf-8"))


def _endpoints() -> dict[str, CatalogEndpoint]:
    pages = _load_pages()
    if set(pages) != set(MODELS) or not OPEN_WEIGHTS.issubset(MODELS):
        raise RuntimeError("catalog: pages.json, schemas.MODELS and OPEN_WEIGHTS disagree")
    return {endpoint_id: CatalogEndpoint(
        id=endpoint_id, title=page["title"], description=page["description"],
        category=page["category"], tags=tuple(page["tags"]),
        supports_streaming=page["supports_streaming"],
        input_model=MODELS[endpoint_id][0], output_model=MODELS[endpoint_id][1],
        example_input=page["example_input"], open_weights=endpoint_id in OPEN_WEIGHTS)
        for endpoint_id, page in pages.items()}


ENDPOINTS: dict[str, CatalogEndpoint] = _endpoints()
