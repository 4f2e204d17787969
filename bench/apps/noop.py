"""No-op apps for the benchmarks: what the platform costs when the model costs nothing."""

from __future__ import annotations

from pydantic import BaseModel

import openfal


class Frame(BaseModel):
    image: bytes = b""
    n: int = 0


class NoopRealtime(openfal.App):
    app_name = "noop-realtime"
    max_multiplexing = 64
    keep_alive = 300

    @openfal.realtime("/realtime")
    async def frame(self, input: Frame) -> Frame:
        return input
