"""Cold starts, measured: how long the first request to an app with no runner takes, against
the next one (its runner warm), for the echo app and a tiny FLUX pipeline.

Each round starts a fresh ``openfal serve`` (no runner is started before a request comes),
sends one request and then another, and stops the server. The cold start is the first
request's time less the second's: the runner process starting, importing the app and
running its ``setup()`` (for FLUX: loading the pipeline). Also shown: how long the runner
process takes to import openfal's runner module alone, in a fresh interpreter. Usage::

    python bench/bench_cold_start.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from bench_flux import HUB_ID, queued_once

from openfal.models.tiny import make_tiny
from openfal.testing import ServerProcess

ECHO_ARGS = ["--no-auth", "--no-builtin", "--app", "openfal.models.echo::Echo"]
FLUX_ARGS = ["--no-auth", "--no-builtin", "--app", "openfal.models.flux::OpenfalFlux"]
FLUX_BODY = {"prompt": "a red fox", "image_size": {"width": 256, "height": 256},
             "num_inference_steps": 4, "seed": 1}


def echo_request(client: httpx.Client) -> float:
    started = time.perf_counter()
    response = client.post("/openfal/echo", json={"prompt": "hello"})
    response.raise_for_status()
    return time.perf_counter() - started


def flux_request(client: httpx.Client) -> float:
    return queued_once(client, FLUX_BODY, "openfal/flux")[0]


def first_and_next(data_dir: Path, args: list[str],
                   request: Callable[[httpx.Client], float]) -> tuple[float, float]:
    with (ServerProcess(data_dir, args) as server,
          httpx.Client(base_url=server.url, timeout=600) as client):
        return request(client), request(client)


def import_seconds() -> float:
    """A fresh interpreter importing the runner's module (what every runner does first)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import openfal.runner.process"], check=True)
    return time.perf_counter() - started


def report(name: str, rounds: list[tuple[float, float]]) -> None:
    first = statistics.median(r[0] for r in rounds)
    warm = statistics.median(r[1] for r in rounds)
    print(f"  {name:<20} first request {first * 1000:8.0f} ms   next {warm * 1000:7.0f} ms"
          f"   cold start {(first - warm) * 1000:8.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    echo, flux = [], []
    with tempfile.TemporaryDirectory(prefix="openfal-bench-cold-") as tmp:
        root = Path(tmp)
        models = root / "models"
        make_tiny("flux", models / HUB_ID)
        for i in range(args.rounds):
            echo.append(first_and_next(root / f"echo{i}", ECHO_ARGS, echo_request))
            data_dir = root / f"flux{i}"
            data_dir.mkdir()
            (data_dir / "models").symlink_to(models)
            flux.append(first_and_next(data_dir, FLUX_ARGS, flux_request))
    imports = statistics.median(import_seconds() for _ in range(args.rounds))
    print(f"Cold starts (median of {args.rounds} fresh servers)")
    report("echo", echo)
    report("FLUX, tiny weights", flux)
    print(f"  importing openfal.runner.process in a fresh interpreter: {imports * 1000:.0f} ms")


if __name__ == "__main__":
    main()
