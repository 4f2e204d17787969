"""Benchmark: a FLUX.1 Kontext edit through openfal's queue against the same diffusers pipeline
called directly in this process, same model, size, steps and seeds, in one command; then the
peak memory of the one runner that serves the three Kontext endpoints.

The model is a tiny random FluxKontextPipeline built in code (``openfal models make-tiny
flux-kontext``), so the ratio isolates what openfal adds per request: the queue, dispatch to
the runner, the input image from its data URI to a file, storage of the output, status and
result fetches. The direct baseline does what a script holding the same input PNG would:
decodes it, calls the pipeline with the arguments the app passes (the generation's own area,
no automatic resize) and encodes the result as a PNG the way the app does.
Usage::

    python bench/bench_kontext.py [--requests 20] [--size 256] [--steps 8]
"""

from __future__ import annotations

import argparse
import base64
import io
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from bench_flux import WARMUP, Queued, queued_once, summary
from PIL import Image

from openfal.models.tiny import make_tiny
from openfal.testing import ServerProcess

EDIT = "fal-ai/flux-kontext-lora"
HUB_ID = "black-forest-labs/FLUX.1-Kontext-dev"
PROMPT = "make it a snowy night"


def input_image(size: int) -> Image.Image:
    return Image.radial_gradient("L").resize((size, size)).convert("RGB")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def direct_editor(model_dir: Path, image_png: bytes, steps: int) -> Callable[[int], float]:
    """The diffusers pipeline loaded in this process; each call decodes ``image_png``, edits
    it once, encodes the result as PNG and returns the time it took."""
    import torch
    from diffusers import FluxKontextPipeline

    pipeline = FluxKontextPipeline.from_pretrained(model_dir, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)

    def edit(seed: int) -> float:
        started = time.perf_counter()
        image = Image.open(io.BytesIO(image_png)).convert("RGB")
        width, height = image.size
        result = pipeline(image=image, prompt=PROMPT, width=width, height=height,
                          max_area=width * height, _auto_resize=False,
                          num_inference_steps=steps, guidance_scale=2.5,
                          max_sequence_length=min(512, pipeline.tokenizer_2.model_max_length),
                          generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        result.save(io.BytesIO(), format="PNG", compress_level=1)
        return time.perf_counter() - started

    return edit


def runner_peak_memory(client: httpx.Client, app_id: str) -> int:
    """The peak resident memory (VmHWM, bytes) of the one runner of ``app_id``."""
    [runner] = [r for r in client.get("/api/runners").json()["runners"]
                if r["app_id"] == app_id]
    for line in Path(f"/proc/{runner['pid']}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc")


def serve_all_three(client: httpx.Client, image_uri: str, size: int, steps: int) -> None:
    """One request to each Kontext endpoint (the edit has run already)."""
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size))
    queued_once(client, {
        "image_url": image_uri, "mask_url": data_uri(mask.convert("RGB")),
        "reference_image_url": image_uri, "prompt": PROMPT, "num_inference_steps": steps},
        f"{EDIT}/inpaint")
    queued_once(client, {
        "prompt": PROMPT, "image_size": {"width": size, "height": size},
        "num_inference_steps": steps}, f"{EDIT}/text-to-image")


def measure(data_dir: Path, model_dir: Path, size: int, steps: int,
            seeds: list[int]) -> tuple[list[float], list[Queued], int]:
    """Direct and queued edits, alternated so that both see the same machine; then the
    runner's peak memory once it has served all three endpoints."""
    image = input_image(size)
    direct = direct_editor(model_dir, png(image), steps)
    image_uri = data_uri(image)

    def body(seed: int) -> dict:
        return {"image_url": image_uri, "prompt": PROMPT, "seed": seed,
                "num_inference_steps": steps}

    direct_times: list[float] = []
    queued: list[Queued] = []
    args = ["--no-auth", "--no-builtin", "--app", "openfal.models.flux_kontext::FluxKontextLora"]
    with (ServerProcess(data_dir, args) as server,
          httpx.Client(base_url=server.url, timeout=300) as client):
        for seed in range(WARMUP):
            direct(seed)
            queued_once(client, body(seed), EDIT)
        for seed in seeds:
            direct_times.append(direct(seed))
            queued.append(queued_once(client, body(seed), EDIT))
        serve_all_three(client, image_uri, size, steps)
        peak = runner_peak_memory(client, EDIT)
    return direct_times, queued, peak


def phases(queued: list[Queued]) -> list[tuple[str, float]]:
    """Where a queued request's time goes (medians, seconds)."""
    def median(part: Callable[[Queued], float]) -> float:
        return statistics.median(part(q) for q in queued)

    return [("submit answered", median(lambda q: q.submitted)),
            ("then running (first IN_PROGRESS event)", median(lambda q: q.started - q.submitted)),
            ("then the pipeline, as the app timed it", median(lambda q: q.inference)),
            ("then the rest until COMPLETED (input, PNG, storage, result)",
             median(lambda q: q.completed - q.started - q.inference)),
            ("then the result fetched", median(lambda q: q.wall - q.completed))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    seeds = list(range(100, 100 + args.requests))
    with tempfile.TemporaryDirectory(prefix="openfal-bench-kontext-") as tmp:
        data_dir = Path(tmp)
        model_dir = make_tiny("flux-kontext", data_dir / "models" / HUB_ID)
        direct, queued, peak = measure(data_dir, model_dir, args.size, args.steps, seeds)
    walls = [q.wall for q in queued]
    ratio = statistics.median(walls) / statistics.median(direct)
    direct_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"FLUX.1 Kontext edit (tiny random weights) {args.size}x{args.size}, {args.steps} "
          f"steps, {args.requests} requests each, one at a time, alternated")
    print(f"  diffusers pipeline, direct, in process : {summary(direct)}")
    print(f"  openfal queue, submit to result        : {summary(walls)}")
    for name, seconds in phases(queued):
        print(f"    {name:<60}: median {seconds * 1000:6.1f} ms")
    print(f"  overhead ratio (median openfal / median direct): {ratio:.3f} (goal <= 1.05)")
    print(f"  added per request (median): "
          f"{(statistics.median(walls) - statistics.median(direct)) * 1000:.1f} ms")
    print(f"  peak memory of the runner serving edit, inpaint and text-to-image: "
          f"{peak / 2**20:.0f} MiB (this benchmark process, pipeline loaded directly: "
          f"{direct_peak / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
