"""Apps the tests serve. Each exercises one part of the platform's contract."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import openfal

log = logging.getLogger("testapps")


class WorkInput(BaseModel):
    seconds: float = Field(default=0.0, ge=0, description="How long to work.")
    steps: int = Field(default=1, ge=1)
    message: str = "working"
    fail: Literal["crash", "unhealthy", "error", "field", "app"] | None = None
    marker_dir: str | None = Field(default=None, description="Crash only while no marker.")


class WorkOutput(BaseModel):
    request_id: str
    pid: int
    steps: int
    message: str
    started_at: float = 0.0
    finished_at: float = 0.0


class Work(openfal.App):
    """A sync endpoint that logs, reports progress and fails on request."""

    app_name = "work"
    keep_alive = 30
    max_multiplexing = 4
    max_concurrency = 2
    request_timeout = 20
    cancel_grace_period = 1

    def setup(self) -> None:
        print("work app setup done")

    def provide_hints(self) -> list[str]:
        return [f"pid-{os.getpid()}"]

    @openfal.endpoint("/")
    def run(self, input: WorkInput) -> WorkOutput:
        request = self.current_request
        assert request is not None
        started_at = time.time()
        print(f"start {input.message}")
        log.warning("logged through logging")
        if input.fail == "crash" and not _marked(input.marker_dir, request.request_id):
            os._exit(3)
        if input.fail == "unhealthy" and not _marked(input.marker_dir, request.request_id):
            raise openfal.AppException("device lost", status_code=503)
        if input.fail == "error":
            raise RuntimeError("boom")
        if input.fail == "field":
            raise openfal.FieldException("message", "message is not acceptable")
        if input.fail == "app":
            raise openfal.AppException("bad message", status_code=400)
        for step in range(1, input.steps + 1):
            time.sleep(input.seconds / input.steps)
            openfal.progress(step, input.steps)
        request.billable_units = input.steps
        return WorkOutput(request_id=request.request_id, pid=os.getpid(), steps=input.steps,
                          message=input.message, started_at=started_at,
                          finished_at=time.time())

    @openfal.endpoint("/partials")
    def partials(self, input: WorkInput) -> dict:
        if input.fail == "error":
            raise RuntimeError("failed before any partial")
        for step in range(1, input.steps + 1):
            time.sleep(input.seconds / input.steps)
            openfal.partial({"step": step, "of": input.steps})
        if input.fail == "app":
            raise openfal.AppException("failed after partials", status_code=400)
        return {"final": True, "steps": input.steps}

    @openfal.endpoint("/edit")
    def edit(self, input: WorkInput) -> WorkOutput:
        request = self.current_request
        assert request is not None
        return WorkOutput(request_id=request.request_id, pid=os.getpid(), steps=0,
                          message=f"edited {input.message}")


def _marked(marker_dir: str | None, request_id: str) -> bool:
    """True from the second call on for this request: lets a failure happen only once."""
    if marker_dir is None:
        return False
    marker = Path(marker_dir) / request_id
    if marker.exists():
        return True
    marker.touch()
    return False


class WaitInput(BaseModel):
    seconds: float = 30.0
    cooperative: bool = True


class Wait(openfal.App):
    """Waits: async endpoints cancelled as tasks, sync ones cooperatively or not at all."""

    app_name = "wait"
    max_multiplexing = 2
    request_timeout = 2
    cancel_grace_period = 1

    @openfal.endpoint("/")
    async def run(self, input: WaitInput) -> dict:
        await asyncio.sleep(input.seconds)
        return {"waited": input.seconds}

    @openfal.endpoint("/sync")
    def sync(self, input: WaitInput) -> dict:
        deadline = time.monotonic() + input.seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if input.cooperative:
                openfal.progress(0, 1)
        return {"waited": input.seconds}


class ScaleInput(BaseModel):
    pass


class Scale(openfal.App):
    """Scales to zero one second after its last request."""

    app_name = "scale"
    keep_alive = 1
    max_concurrency = 3

    @openfal.endpoint("/")
    def run(self, input: ScaleInput) -> dict:
        time.sleep(0.3)
        return {"pid": os.getpid()}


class StrictInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    count: int = Field(default=1, ge=1, le=4)


class Strict(openfal.App):
    app_name = "strict"

    @openfal.endpoint("/")
    def run(self, input: StrictInput) -> dict:
        return {"prompt": input.prompt, "count": input.count}


class BrokenSetup(openfal.App):
    app_name = "broken"

    def setup(self) -> None:
        raise RuntimeError("weights are missing")

    @openfal.endpoint("/")
    def run(self, input: ScaleInput) -> dict:
        return {}


class MediaInput(BaseModel):
    image: openfal.Image | None = None
    image_url: str | None = Field(default=None, description="A plain *_url string.")
    document: openfal.File | None = None
    sync_mode: bool = False


class Media(openfal.App):
    """Reads media inputs without download code and returns media outputs."""

    app_name = "media"
    max_multiplexing = 4

    @openfal.endpoint("/")
    def run(self, input: MediaInput) -> dict:
        import hashlib

        from PIL import Image as PIL

        result: dict = {}
        if input.image is not None:
            pil = input.image.to_pil()
            result["image"] = {"size": list(pil.size), "width": input.image.width,
                               "height": input.image.height}
            result["flipped"] = openfal.Image.from_pil(
                pil.transpose(PIL.Transpose.FLIP_LEFT_RIGHT), "png")
        if input.image_url is not None:
            result["image_url"] = {"size": list(input.image_url.to_pil().size),
                                   "is_str": isinstance(input.image_url, str)}
        if input.document is not None:
            data = input.document.read_bytes()
            result["document"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                  "size": input.document.file_size}
            result["echo"] = openfal.File.from_bytes(data, "text/plain", "echo.txt")
        return result


class FrameInput(BaseModel):
    image: bytes = b""
    n: int = Field(default=0, ge=0)


class RealtimeEcho(openfal.App):
    """Realtime endpoints: one answer per message, or partials then an answer."""

    app_name = "realtime-echo"
    max_multiplexing = 8

    @openfal.realtime("/realtime", session_timeout=1.5)
    async def frames(self, input: FrameInput) -> dict:
        return {"n": input.n, "size": len(input.image), "image": input.image[::-1]}

    @openfal.realtime("/steps")
    def steps(self, input: FrameInput) -> dict:
        for i in range(input.n):
            openfal.partial({"partial": i})
        return {"final": input.n}


class PublicEcho(openfal.App):
    """An app anyone may call without a key."""

    app_name = "public-echo"
    app_auth = "public"
    max_multiplexing = 8

    @openfal.endpoint("/")
    def run(self, input: ScaleInput) -> dict:
        return {"ok": True}


class Warm(openfal.App):
    """Always keeps one runner, up to two under load."""

    app_name = "warm"
    min_concurrency = 1
    max_concurrency = 2
    keep_alive = 0.5

    @openfal.endpoint("/")
    def run(self, input: WaitInput) -> dict:
        time.sleep(input.seconds)
        return {"pid": os.getpid()}


class BatchItem(BaseModel):
    value: str
    group: str = "a"
    fail: Literal["item", "call"] | None = None


class BatchedValue(BaseModel):
    value: str
    request_id: str
    batch: list[str] = Field(description="The values served by the same call, in order.")


class Batched(openfal.App):
    """A batched endpoint: requests of one group share a call of up to 4."""

    app_name = "batched"
    max_multiplexing = 4
    keep_alive = 60

    @openfal.endpoint("/", batch=openfal.Batch(max_size=4, wait_seconds=3.0,
                                               key=lambda item: item.group))
    def run(self, items: list[BatchItem]) -> list[BatchedValue]:
        ctx = openfal.current_request()
        assert isinstance(ctx, openfal.BatchContext)
        values = [item.value for item in items]
        print(f"serving {', '.join(values)} in one call")
        openfal.progress(1, 1)
        if any(item.fail == "call" for item in items):
            raise RuntimeError("this input breaks the whole call")
        return [openfal.AppException(f"{item.value} is refused", 400, "refused")
                if item.fail == "item"
                else BatchedValue(value=item.value, request_id=member.request_id, batch=values)
                for item, member in zip(items, ctx.members, strict=True)]
