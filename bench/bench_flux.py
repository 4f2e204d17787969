"""Benchmark: the FLUX app through openfal's queue against the same diffusers pipeline
called directly, same model, size, steps and seeds, in one command.

The weights are those ``--models-dir`` holds for FLUX.1 [schnell] (``<dir>/<hub id>``, as
``openfal serve --models-dir`` reads them), else a tiny random FLUX pipeline built in code
(``openfal models make-tiny flux``), so the figure isolates what openfal adds per request:
queue submit and commit, dispatch to the runner process, image encoding and storage, status
and result fetches. The direct baseline also encodes each image as JPEG, as any caller
wanting a file would. Both run where openfal's runners run: CUDA in bfloat16 when there is
a GPU, else the CPU in float32 (``OPENFAL_DEVICE``/``OPENFAL_DTYPE`` override both).

The GPU options apply to an extra direct row, beside the plain one, so each shows what it
gives: ``--compile`` (``torch.compile`` of the transformer), ``--channels-last`` (the VAE in
channels-last memory format), ``--fp8`` (the transformer's linear layers in float8 through
torchao, when it is installed: a row says so when it is not). Usage::

    python bench/bench_flux.py [--requests 30] [--size 256] [--steps 4] [--models-dir DIR]
                               [--compile] [--channels-last] [--fp8]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from openfal.models.tiny import make_tiny
from openfal.models.weights import device_and_dtype, place_pipeline
from openfal.testing import ServerProcess

ENDPOINT = "fal-ai/flux/schnell"
HUB_ID = "black-forest-labs/FLUX.1-schnell"
WARMUP = 3


@dataclass(frozen=True)
class Speedups:
    compile: bool = False
    channels_last: bool = False
    fp8: bool = False

    def __bool__(self) -> bool:
        return self.compile or self.channels_last or self.fp8

    def describe(self) -> str:
        return ", ".join(name for name, on in (("torch.compile", self.compile),
                                               ("channels-last VAE", self.channels_last),
                                               ("fp8 (torchao)", self.fp8)) if on)


def direct_generator(model_dir: Path, size: int, steps: int,
                     speedups: Speedups = Speedups()) -> Callable[[int], float]:
    """The diffusers pipeline loaded in this process, where openfal's runners would put it;
    each call generates one image (and encodes it as JPEG) and returns the time it took."""
    import torch
    from diffusers import FluxPipeline

    device, dtype = device_and_dtype()
    pipeline = place_pipeline(FluxPipeline.from_pretrained(model_dir, dtype=dtype), device)
    apply_speedups(pipeline, speedups)

    def generate(seed: int) -> float:
        started = time.perf_counter()
        image = pipeline(prompt="a red fox in the snow", width=size, height=size,
                         num_inference_steps=steps, guidance_scale=3.5,
                         max_sequence_length=min(512, pipeline.tokenizer_2.model_max_length),
                         generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        image.save(io.BytesIO(), format="JPEG", quality=95)
        return time.perf_counter() - started

    return generate


def apply_speedups(pipeline: Any, speedups: Speedups) -> None:
    import torch

    if speedups.fp8:
        from torchao.quantization import float8_dynamic_activation_float8_weight, quantize_

        quantize_(pipeline.transformer, float8_dynamic_activation_float8_weight())
    if speedups.channels_last:
        pipeline.vae.to(memory_format=torch.channels_last)
    if speedups.compile:
        pipeline.transformer = torch.compile(pipeline.transformer)


def fp8_missing() -> str | None:
    """Why fp8 cannot be measured here, or None."""
    try:
        import torchao.quantization  # noqa: F401
    except ImportError:
        return "torchao is not installed (pip install torchao)"
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        return "float8 matmuls need a CUDA GPU of compute capability 8.9 or newer"
    return None


class Queued(NamedTuple):
    """One queued request's times, in seconds from its submit."""

    wall: float  # to its result fetched
    inference: float  # the pipeline's time, as the app measured it in the runner
    submitted: float  # the submit answered
    started: float  # the first IN_PROGRESS event on the status stream
    completed: float  # the COMPLETED event


def queued_once(client: httpx.Client, body: dict, endpoint: str = ENDPOINT) -> Queued:
    """Submit to ``endpoint``, follow the status stream until COMPLETED, fetch the result."""
    started = time.perf_counter()
    handle = client.post(f"/queue/{endpoint}", json=body).json()
    submitted = time.perf_counter() - started
    in_progress = None
    with client.stream("GET", handle["status_url"] + "/stream") as stream:
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            status = json.loads(line[6:])["status"]
            if status == "IN_PROGRESS" and in_progress is None:
                in_progress = time.perf_counter() - started
            if status == "COMPLETED":
                break
    completed = time.perf_counter() - started
    result = client.get(handle["response_url"])
    elapsed = time.perf_counter() - started
    if result.status_code != 200:
        raise RuntimeError(f"request failed: {result.text}")
    return Queued(elapsed, result.json()["timings"]["inference"], submitted,
                  submitted if in_progress is None else in_progress, completed)


def measure(data_dir: Path, model_dir: Path, size: int, steps: int, seeds: list[int],
            speedups: Speedups) -> dict[str, list[float]]:
    """Direct (plain, and with ``speedups`` if any) and queued generations, alternated so
    that all see the same machine."""
    direct = direct_generator(model_dir, size, steps)
    sped_up = direct_generator(model_dir, size, steps, speedups) if speedups else None

    def body(seed: int) -> dict:
        return {"prompt": "a red fox in the snow", "seed": seed,
                "image_size": {"width": size, "height": size}, "num_inference_steps": steps}

    times: dict[str, list[float]] = {"direct": [], "sped_up": [], "queued": [], "in_runner": []}
    args = ["--no-auth", "--models-dir", str(model_dir.parents[1])]
    with (ServerProcess(data_dir, args) as server,
          httpx.Client(base_url=server.url, timeout=300) as client):
        for seed in range(WARMUP):  # compiles and autotunes too
            direct(seed)
            if sped_up is not None:
                sped_up(seed)
            queued_once(client, body(seed))
        for seed in seeds:
            times["direct"].append(direct(seed))
            if sped_up is not None:
                times["sped_up"].append(sped_up(seed))
            queued = queued_once(client, body(seed))
            times["queued"].append(queued.wall)
            times["in_runner"].append(queued.inference)
    return times


def summary(times: list[float]) -> str:
    return (f"median {statistics.median(times) * 1000:7.1f} ms   "
            f"mean {statistics.fmean(times) * 1000:7.1f} ms   "
            f"min {min(times) * 1000:7.1f} ms")


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--models-dir", type=Path,
                        help="where FLUX.1 [schnell]'s weights are (<dir>/" + HUB_ID + ")")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--fp8", action="store_true")
    args = parser.parse_args(argv)
    if args.fp8 and (why := fp8_missing()) is not None:
        print(f"--fp8 left out: {why}")
        args.fp8 = False
    speedups = Speedups(args.compile, args.channels_last, args.fp8)
    seeds = list(range(100, 100 + args.requests))
    with tempfile.TemporaryDirectory(prefix="openfal-bench-flux-") as tmp:
        data_dir = Path(tmp)
        real = args.models_dir / HUB_ID if args.models_dir else None
        model_dir = (real if real is not None and real.is_dir()
                     else make_tiny("flux", data_dir / "models" / HUB_ID))
        times = measure(data_dir, model_dir, args.size, args.steps, seeds, speedups)
    direct, queued, in_runner = times["direct"], times["queued"], times["in_runner"]
    ratio = statistics.median(queued) / statistics.median(direct)
    device, dtype = device_and_dtype()
    weights = "real weights" if model_dir == real else "tiny random weights"
    print(f"FLUX ({weights}, {device}, {str(dtype).removeprefix('torch.')}) "
          f"{args.size}x{args.size}, {args.steps} steps, {args.requests} requests each, "
          f"one at a time, alternated")
    print(f"  diffusers pipeline, direct, in process : {summary(direct)}")
    if speedups:
        print(f"    with {speedups.describe():<26}: {summary(times['sped_up'])}  "
              f"({statistics.median(direct) / statistics.median(times['sped_up']):.2f}x)")
    print(f"  openfal queue, submit to result        : {summary(queued)}")
    print(f"    of which the pipeline in the runner  : {summary(in_runner)}")
    print(f"  overhead ratio (median openfal / median direct): {ratio:.3f} (goal < 1.05)")
    print(f"  added per request (median): "
          f"{(statistics.median(queued) - statistics.median(direct)) * 1000:.1f} ms, of which "
          f"outside the pipeline call: "
          f"{(statistics.median(queued) - statistics.median(in_runner)) * 1000:.1f} ms")
    sped_up = (f", {speedups.describe()} "
               f"{statistics.median(direct) / statistics.median(times['sped_up']):.2f}x"
               if speedups else "")
    return [f"FLUX through the queue on {device} ({weights})",
            f"{ratio:.3f}x the direct pipeline's time{sped_up}", "ran"]


if __name__ == "__main__":
    main()
