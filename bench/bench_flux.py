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
from pathlib import Path

import httpx

from openfal.models.tiny import make_tiny
from openfal.testing import ServerProcess

ENDPOINT = "fal-ai/flux/schnell"
HUB_ID = "black-forest-labs/FLUX.1-schnell"
WARMUP = 3


def direct_times(model_dir: Path, size: int, steps: int, seeds: list[int]) -> list[float]:
    import torch
    from diffusers import FluxPipeline

    pipeline = FluxPipeline.from_pretrained(model_dir, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)

    def generate(seed: int) -> None:
        image = pipeline(prompt="a red fox in the snow", width=size, height=size,
                         num_inference_steps=steps, guidance_scale=3.5,
                         max_sequence_length=min(512, pipeline.tokenizer_2.model_max_length),
                         generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        image.save(io.BytesIO(), format="JPEG", quality=95)

    for seed in range(WARMUP):
        generate(seed)
    times = []
    for seed in seeds:
        started = time.perf_counter()
        generate(seed)
        times.append(time.perf_counter() - started)
    return times


def queued_once(client: httpx.Client, body: dict) -> float:
    """Submit, follow the status stream until COMPLETED, fetch the result."""
    started = time.perf_counter()
    handle = client.post(f"/queue/{ENDPOINT}", json=body).json()
    with client.stream("GET", handle["status_url"] + "/stream") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["status"] == "COMPLETED":
                break
    result = client.get(handle["response_url"])
    elapsed = time.perf_counter() - started
    if result.status_code != 200:
        raise RuntimeError(f"request failed: {result.text}")
    return elapsed


def openfal_times(data_dir: Path, size: int, steps: int, seeds: list[int]) -> list[float]:
    def body(seed: int) -> dict:
        return {"prompt": "a red fox in the snow", "seed": seed,
                "image_size": {"width": size, "height": size}, "num_inference_steps": steps}

    with (ServerProcess(data_dir, ["--no-auth"]) as server,
          httpx.Client(base_url=server.url, timeout=300) as client):
        for seed in range(WARMUP):
            queued_once(client, body(seed))
        return [queued_once(client, body(seed)) for seed in seeds]


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
        direct = direct_times(model_dir, args.size, args.steps, seeds)
        queued = openfal_times(data_dir, args.size, args.steps, seeds)
    ratio = statistics.median(queued) / statistics.median(direct)
    print(f"FLUX (tiny random weights) {args.size}x{args.size}, {args.steps} steps, "
          f"{args.requests} requests each, one at a time")
    print(f"  diffusers pipeline, direct, in process : {summary(direct)}")
    print(f"  openfal queue, submit to result        : {summary(queued)}")
    print(f"  overhead ratio (median openfal / median direct): {ratio:.3f} (goal < 1.05)")
    print(f"  added per request (median): "
          f"{(statistics.median(queued) - statistics.median(direct)) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
