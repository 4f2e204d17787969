"""Apps for the upstream routing tests (tests/test_upstream.py) and bench/bench_upstream.py.

Two openfal servers take part: the *upstream* serves stand-ins under catalog ids (owner
``fal-ai``), the *front* serves endpoints with the same ids that forward there, routed
with ``--config``. Stand-ins do work a caller can recognise: log, report progress, wait,
refuse a value with a field error, read an input file, return a file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

import openfal
from openfal.app.errors import ModelUnavailable
from openfal.upstream.router import forward

log = logging.getLogger("standin")

KLING = "fal-ai/kling-video/v2/master/text-to-video"
NOOP = "fal-ai/kling-video/noop"
FAST_SDXL = "fal-ai/fast-sdxl"
AURA_FLOW = "fal-ai/aura-flow"


# --- the upstream's stand-ins -------------------------------------------------------------


class KlingInput(BaseModel):
    prompt: str
    duration: Literal["5", "10"] = "5"
    steps: int = Field(default=1, ge=1)
    seconds: float = Field(default=0.0, ge=0, description="How long to work, in all.")
    image_url: str | None = None
    tag: str = ""


class KlingOutput(BaseModel):
    video: openfal.Video
    prompt: str
    duration: str
    image_sha256: str | None = None
    tag: str = ""


class NoopInput(BaseModel):
    n: int = 0


class KlingVideo(openfal.App):
    """The upstream's ``fal-ai/kling-video``: a video endpoint and a no-op (for the bench)."""

    app_owner = "fal-ai"
    app_name = "kling-video"
    keep_alive = 600
    max_multiplexing = 64
    cancel_grace_period = 2

    @openfal.endpoint("/v2/master/text-to-video")
    async def text_to_video(self, input: KlingInput) -> KlingOutput:
        print(f"rendering {input.prompt!r}")
        log.warning("the stand-in renders no real video")
        if input.prompt == "bad":
            raise openfal.FieldException("prompt", "the stand-in refuses this prompt")
        for step in range(1, input.steps + 1):
            await asyncio.sleep(input.seconds / input.steps)
            openfal.progress(step, input.steps)
            print(f"step {step} of {input.steps}")
        image_sha256 = None
        if input.image_url is not None:
            image_sha256 = hashlib.sha256(input.image_url.read_bytes()).hexdigest()  # type: ignore[attr-defined]
        video = openfal.Video.from_bytes(video_bytes(input.prompt), "video/mp4", "video.mp4")
        return KlingOutput(video=video, prompt=input.prompt, duration=input.duration,
                           image_sha256=image_sha256, tag=input.tag)

    @openfal.endpoint("/noop")
    async def noop(self, input: NoopInput) -> dict[str, Any]:
        return {"n": input.n}


def video_bytes(prompt: str) -> bytes:
    """What the stand-in's "video" holds: recognisable, and more than one read's worth."""
    return (f"video of {prompt}\n".encode() * 5000)[:70_000]


class ImagesInput(BaseModel):
    prompt: str
    seconds: float = Field(default=0.0, ge=0)


class FastSdxl(openfal.App):
    """The upstream's ``fal-ai/fast-sdxl``, for the fallback of a local app without weights.
    One request at a time: a slow one makes the next wait in the upstream's queue."""

    app_owner = "fal-ai"
    app_name = "fast-sdxl"
    keep_alive = 600

    @openfal.endpoint("/")
    def run(self, input: ImagesInput) -> dict[str, Any]:
        time.sleep(input.seconds)
        return {"served_by": "upstream", "prompt": input.prompt}


class AuraFlow(openfal.App):
    """The upstream's ``fal-ai/aura-flow``."""

    app_owner = "fal-ai"
    app_name = "aura-flow"
    keep_alive = 600

    @openfal.endpoint("/")
    def run(self, input: ImagesInput) -> dict[str, Any]:
        return {"served_by": "upstream", "prompt": input.prompt}


UPSTREAM_APPS = ("KlingVideo", "FastSdxl", "AuraFlow")


# --- the front's apps ---------------------------------------------------------------------


class RoutedKlingInput(BaseModel):
    prompt: str
    # Looser than the upstream's Literal: the upstream's own 422 comes back.
    duration: str = "5"
    steps: int = Field(default=1, ge=1)
    seconds: float = Field(default=0.0, ge=0)
    image_url: str | None = None
    tag: str = ""


class RoutedKling(openfal.App):
    """``fal-ai/kling-video`` as the catalog serves it: routed only, forwarded upstream."""

    routed_only = True
    app_owner = "fal-ai"
    app_name = "kling-video"
    keep_alive = 600
    max_multiplexing = 64
    request_timeout = 120

    @openfal.endpoint("/v2/master/text-to-video")
    async def text_to_video(self, input: RoutedKlingInput) -> dict[str, Any]:
        return await forward(self.current_request, KLING, input)

    @openfal.endpoint("/noop")
    async def noop(self, input: NoopInput) -> dict[str, Any]:
        return await forward(self.current_request, NOOP, input)


class LumaInput(BaseModel):
    prompt: str = Field(min_length=1)


class RoutedLuma(openfal.App):
    """A routed-only endpoint that no configured upstream serves."""

    routed_only = True
    app_owner = "fal-ai"
    app_name = "luma-dream-machine"

    @openfal.endpoint("/")
    async def run(self, input: LumaInput) -> dict[str, Any]:
        return await forward(self.current_request, "fal-ai/luma-dream-machine", input)


class MissingWeights(openfal.App):
    """A local app whose weights are missing (as the FLUX apps find out, in the request):
    ``/`` has an upstream, ``/local-only`` has none."""

    app_owner = "fal-ai"
    app_name = "fast-sdxl"

    @openfal.endpoint("/")
    def run(self, input: ImagesInput) -> dict[str, Any]:
        raise ModelUnavailable("The weights of fast-sdxl are not on this machine.")

    @openfal.endpoint("/local-only")
    def local_only(self, input: ImagesInput) -> dict[str, Any]:
        raise ModelUnavailable("The weights of fast-sdxl are not on this machine.")


class MissingRuntime(openfal.App):
    """A local app whose setup() finds its runtime missing."""

    app_owner = "fal-ai"
    app_name = "aura-flow"

    def setup(self) -> None:
        raise ModelUnavailable("The model runtime is not installed (missing: torch).")

    @openfal.endpoint("/")
    def run(self, input: ImagesInput) -> dict[str, Any]:
        return {"served_by": "front"}


FRONT_APPS = ("RoutedKling", "RoutedLuma", "MissingWeights", "MissingRuntime")
