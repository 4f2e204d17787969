"""Apps for GPU placement (``--gpus``): each tells which devices its runner was given."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

import openfal

GATE_TIMEOUT = 30.0


class GpuInput(BaseModel):
    gate: str | None = Field(default=None, description="Answer once this file exists.")


class Devices(BaseModel):
    devices: str | None  # CUDA_VISIBLE_DEVICES as the runner sees it; None: not set
    pid: int


class OneGpu(openfal.App):
    """A runner per request (no multiplexing), one GPU each, up to three runners."""

    machine_type = "GPU-A100"
    max_concurrency = 3
    keep_alive = 1

    @openfal.endpoint("/")
    def run(self, input: GpuInput) -> Devices:
        if input.gate is not None:
            deadline = time.monotonic() + GATE_TIMEOUT
            while not Path(input.gate).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return Devices(devices=os.environ.get("CUDA_VISIBLE_DEVICES"), pid=os.getpid())


class OtherGpu(OneGpu):
    """Another app on one GPU (a device its neighbour gave back)."""


class TwoGpus(OneGpu):
    num_gpus = 2


class NoGpu(OneGpu):
    machine_type = "S"


class BrokenGpu(OneGpu):
    def setup(self) -> None:
        raise RuntimeError("no weights")
