"""Apps for the fault drills: slow work that can be abandoned, drained or interrupted."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, Field

import openfal


class SlowInput(BaseModel):
    seconds: float = Field(default=0.5, ge=0, le=60)


class SlowOutput(BaseModel):
    pid: int
    started_at: float
    finished_at: float


class Slow(openfal.App):
    """Sleeps in small steps, checking for cancellation between them."""

    app_name = "slow"
    max_multiplexing = 4
    keep_alive = 60
    cancel_grace_period = 2

    @openfal.endpoint("/")
    def run(self, input: SlowInput) -> SlowOutput:
        started_at = time.time()
        deadline = time.monotonic() + input.seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
            openfal.progress(0, 1)
        return SlowOutput(pid=os.getpid(), started_at=started_at, finished_at=time.time())


class SlowOne(Slow):
    """The same, one request at a time."""

    app_name = "slow-one"
    max_multiplexing = 1
