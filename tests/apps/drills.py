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


class DrillInput(BaseModel):
    n: int
    seconds: float = Field(default=0.5, ge=0, le=600)
    ticks: int = Field(default=1, ge=1, le=10_000)


class DrillOutput(BaseModel):
    n: int
    request_id: str
    pid: int
    file: openfal.File


class Drill(openfal.App):
    """Works ``seconds`` in ``ticks`` (a log line and a cancellation point each), then writes
    an output file made from its input: every result can be told apart, and its file is in
    the platform's file store (the many-hosts drill)."""

    app_name = "drill"
    max_multiplexing = 4
    max_concurrency = 1
    keep_alive = 600
    request_timeout = 600
    cancel_grace_period = 2

    @openfal.endpoint("/")
    def run(self, input: DrillInput) -> DrillOutput:
        request = self.current_request
        assert request is not None
        for tick in range(1, input.ticks + 1):
            print(f"drill {input.n}: tick {tick} of {input.ticks}", flush=True)
            time.sleep(input.seconds / input.ticks)
            openfal.progress(tick, input.ticks)
        output = openfal.File.from_bytes(f"output of {input.n}\n".encode(), "text/plain",
                                         f"drill-{input.n}.txt")
        return DrillOutput(n=input.n, request_id=request.request_id, pid=os.getpid(),
                           file=output)
