"""Benchmark: the FLUX app through openfal's queue against the same diffusers pipeline
called directly, same model, size, steps and seeds, in one command.

The model is a tiny random FLUX pipeline built in code (``openfal models make-tiny flux``),
so the figure isolates what openfal adds per request: queue submit and commit, dispatch to
the runner process, image encoding and storage, status and result fetches. The direct
baseline also encodes each image as JPEG, as any caller wanting a file would. Usage::

    python bench/bench_flux.py [--requests 30] [--size 256] [--steps 4]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from openfal.models.tiny import make_tiny
from openfal.testing import ServerProcess

ENDPOINT = "fal-ai/flux/schnell"
HUB_ID = "black-forest-labs/FLUX.1-schnell"
WARMUP = 3


def direct_generator(model_dir: Path, size: int, steps: int) -> Callable[[int], float]:
    """The diffusers pipeline loaded in this process; each call generates one image (and
    encodes it as JPEG) and returns the time it took."""
    import torch
    from diffusers import FluxPipeline

    pipeline = FluxPipeline.from_pretrained(model_dir, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)

    def generate(seed: int) -> float:
        started = time.perf_counter()
        image = pipeline(prompt="a red fox in the snow", width=size, height=size,
                         num_inference_steps=steps, guidance_scale=3.5,
                         max_sequence_length=min(512, pipeline.tokenizer_2.model_max_length),
                         generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        image.save(io.BytesIO(), format="JPEG", quality=95)
        return time.perf_counter() - started

    return generate


def queued_once(client: httpx.Client, body: dict, endpoint: str = ENDPOINT
                ) -> tuple[float, float]:
    """Submit to ``endpoint``, follow the status stream until COMPLETED, fetch the result:
    the wall time, and the pipeline time the app measured inside the runner."""
    started = time.perf_counter()
    handle = client.post(f"/queue/{endpoint}", json=body).json()
    with client.stream("GET", handle["status_url"] + "/stream") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["status"] == "COMPLETED":
                break
    result = client.get(handle["response_url"])
    elapsed = time.perf_counter() - started
    if result.status_code != 200:
        raise RuntimeError(f"request failed: {result.text}")
    return elapsed, result.json()["timings"]["inference"]


def measure(data_dir: Path, model_dir: Path, size: int, steps: int,
            seeds: list[int]) -> tuple[list[float], list[float], list[float]]:
    """Direct and queued generations, alternated so that both see the same machine."""
    direct = direct_generator(model_dir, size, steps)

    def body(seed: int) -> dict:
        return {"prompt": "a red fox in the snow", "seed": seed,
                "image_size": {"width": size, "height": size}, "num_inference_steps": steps}

    direct_times, queued_times, in_runner = [], [], []
    with (ServerProcess(data_dir, ["--no-auth"]) as server,
          httpx.Client(base_url=server.url, timeout=300) as client):
        for seed in range(WARMUP):
            direct(seed)
            queued_once(client, body(seed))
        for seed in seeds:
            direct_times.append(direct(seed))
            wall, inference = queued_once(client, body(seed))
            queued_times.append(wall)
            in_runner.append(inference)
    return direct_times, queued_times, in_runner


def summary(times: list[float]) -> str:
    return (f"median {statistics.median(times) * 1000:7.1f} ms   "
            f"mean {statistics.fmean(times) * 1000:7.1f} ms   "
            f"min {min(times) * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    seeds = list(range(100, 100 + args.requests))
    with tempfile.TemporaryDirectory(prefix="openfal-bench-flux-") as tmp:
        data_dir = Path(tmp)
        model_dir = make_tiny("flux", data_dir / "models" / HUB_ID)
        direct, queued, in_runner = measure(data_dir, model_dir, args.size, args.steps, seeds)
    ratio = statistics.median(queued) / statistics.median(direct)
    print(f"FLUX (tiny random weights) {args.size}x{args.size}, {args.steps} steps, "
          f"{args.requests} requests each, one at a time, alternated")
    print(f"  diffusers pipeline, direct, in process : {summary(direct)}")
    print(f"  openfal queue, submit to result        : {summary(queued)}")
    print(f"    of which the pipeline in the runner  : {summary(in_runner)}")
    print(f"  overhead ratio (median openfal / median direct): {ratio:.3f} (goal < 1.05)")
    print(f"  added per request (median): "
          f"{(statistics.median(queued) - statistics.median(direct)) * 1000:.1f} ms, of which "
          f"outside the pipeline call: "
          f"{(statistics.median(queued) - statistics.median(in_runner)) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
