"""Dynamic batching, measured: concurrent same-size tiny FLUX requests through the queue,
batched (``openfal/flux`` as shipped: up to four a pipeline call) against one request a call
(bench/apps/flux_one_by_one.py, the same app without batching), on one server, in one run.

Each round submits ``--requests`` requests at once (each follows its status stream and
fetches its result) to one app, then to the other; rounds alternate so both see the same
machine. Usage::

    python bench/bench_batching.py [--requests 16] [--rounds 3] [--size 256] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from bench_flux import HUB_ID, queued_once

from openfal.models.tiny import make_tiny
from openfal.testing import ServerProcess

BATCHED = "openfal/flux"
ONE_BY_ONE = "openfal/flux-one-by-one"
ONE_BY_ONE_APP = Path(__file__).parent / "apps" / "flux_one_by_one.py"


def burst(client: httpx.Client, endpoint: str, bodies: list[dict]) -> float:
    """Requests per second for ``bodies`` submitted at once to ``endpoint``."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(bodies)) as pool:
        list(pool.map(lambda body: queued_once(client, body, endpoint), bodies))
    return len(bodies) / (time.perf_counter() - started)


def measure(requests: int, rounds: int, size: int, steps: int) -> dict[str, list[float]]:
    """Requests/s of each round, batched and one request a call, alternated."""
    bodies = [{"prompt": f"a red fox number {i}", "seed": i, "num_inference_steps": steps,
               "image_size": {"width": size, "height": size}} for i in range(requests)]
    rates: dict[str, list[float]] = {BATCHED: [], ONE_BY_ONE: []}
    with tempfile.TemporaryDirectory(prefix="openfal-bench-batching-") as tmp:
        data_dir = Path(tmp)
        make_tiny("flux", data_dir / "models" / HUB_ID)
        with (ServerProcess(data_dir, ["--no-auth", "--app", f"{ONE_BY_ONE_APP}::FluxOneByOne"])
              as server,
              httpx.Client(base_url=server.url, timeout=600,
                           limits=httpx.Limits(max_connections=4 * requests)) as client):
            for endpoint in rates:  # warm up: runners started, pipelines loaded
                burst(client, endpoint, bodies[:4])
            for _ in range(rounds):
                for endpoint, measured in rates.items():
                    measured.append(burst(client, endpoint, bodies))
    return rates


def speedup(rates: dict[str, list[float]]) -> float:
    return statistics.median(rates[BATCHED]) / statistics.median(rates[ONE_BY_ONE])


def goal_row(rates: dict[str, list[float]], requests: int) -> list[str]:
    """Issue 12's batching goal: [goal, measured, verdict]."""
    ratio = speedup(rates)
    return [f"{requests} concurrent tiny FLUX requests/s, batched >= 1.5x one a call",
            f"{ratio:.2f}x ({statistics.median(rates[BATCHED]):.2f} / "
            f"{statistics.median(rates[ONE_BY_ONE]):.2f} req/s)",
            "met" if ratio >= 1.5 else "missed"]


def report(rates: dict[str, list[float]], args: argparse.Namespace) -> None:
    print(f"FLUX (tiny random weights) {args.size}x{args.size}, {args.steps} steps: "
          f"{args.requests} concurrent requests, {args.rounds} rounds, median")
    for name, endpoint in (("one request a call", ONE_BY_ONE), ("batched, up to 4  ", BATCHED)):
        print(f"  {name} : {statistics.median(rates[endpoint]):6.2f} requests/s  "
              f"({', '.join(f'{r:.2f}' for r in rates[endpoint])})")
    print(f"  ratio batched / one at a time: {speedup(rates):.2f}x (goal >= 1.5)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(argv)
    rates = measure(args.requests, args.rounds, args.size, args.steps)
    report(rates, args)
    return goal_row(rates, args.requests)


if __name__ == "__main__":
    main()
