"""Cold starts, measured: how long the first request to an app with no runner takes, against
the next one (its runner warm), for the echo app and a tiny FLUX pipeline; the first runner
spawned as a new process, and a later one forked from the runner template.

Each round starts a fresh ``openfal serve`` (no runner is started before a request comes),
sends one request and then another; a cold start is the first request's time less the
second's: the runner process starting, importing the app and running its ``setup()`` (for
FLUX: loading the pipeline). The apps (bench/apps/cold_start.py) stop their runner after
half a second idle: once it has stopped and the template (worker/templates.py, started with
the first runner) is ready, the round measures a second cold start, whose runner is forked
from the template. The same rounds run with ``OPENFAL_RUNNER_TEMPLATES=0`` (every runner
spawned) as the baseline. Also shown: how long a fresh interpreter takes to import
openfal's runner module alone. Usage::

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

APPS = Path(__file__).parent / "apps" / "cold_start.py"
ECHO_ARGS = ["--no-auth", "--no-builtin", "--app", f"{APPS}::ColdEcho"]
FLUX_ARGS = ["--no-auth", "--no-builtin", "--app", f"{APPS}::ColdFlux"]
FLUX_BODY = {"prompt": "a red fox", "image_size": {"width": 256, "height": 256},
             "num_inference_steps": 4, "seed": 1}


def echo_request(client: httpx.Client) -> float:
    started = time.perf_counter()
    response = client.post("/openfal/cold-echo", json={"prompt": "hello"})
    response.raise_for_status()
    return time.perf_counter() - started


def flux_request(client: httpx.Client) -> float:
    return queued_once(client, FLUX_BODY, "openfal/cold-flux").wall


def runners_stopped_and_template_settled(client: httpx.Client) -> bool:
    listing = client.get("/api/runners").json()
    return not listing["runners"] and all(t["state"] != "starting"
                                          for t in listing["templates"])


def cold_starts(data_dir: Path, args: list[str], request: Callable[[httpx.Client], float],
                templates: bool) -> tuple[float, float]:
    """The first cold start of a fresh server, and the one after its runner stopped."""
    env = {"OPENFAL_RUNNER_TEMPLATES": "1" if templates else "0"}
    with (ServerProcess(data_dir, args, env=env) as server,
          httpx.Client(base_url=server.url, timeout=600) as client):
        first = request(client) - request(client)
        while not runners_stopped_and_template_settled(client):
            time.sleep(0.05)
        later = request(client) - request(client)
    return first, later


def import_seconds() -> float:
    """A fresh interpreter importing the runner's module (what every runner does first)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import openfal.runner.process"], check=True)
    return time.perf_counter() - started


Rounds = list[tuple[float, float]]  # (first cold start, later cold start) per fresh server


def median_ms(rounds: Rounds, which: int) -> float:
    return statistics.median(r[which] for r in rounds) * 1000


def report(name: str, spawned: Rounds, templated: Rounds) -> None:
    print(f"  {name}")
    print(f"    first runner of a fresh server : {median_ms(templated, 0):7.0f} ms "
          f"(templates off: {median_ms(spawned, 0):7.0f} ms)")
    print(f"    a later runner                 : {median_ms(templated, 1):7.0f} ms forked from "
          f"the template, against {median_ms(spawned, 1):7.0f} ms spawned "
          f"({median_ms(spawned, 1) / median_ms(templated, 1):.1f}x faster)")


def goal_row(name: str, spawned: Rounds, templated: Rounds) -> list[str]:
    """Issue 12's cold start goal for one app: [goal, measured, verdict]."""
    before, after = median_ms(spawned, 1), median_ms(templated, 1)
    return [f"cold start of a later {name} runner cut (spawned -> forked from the template)",
            f"{before:.0f} -> {after:.0f} ms ({before / after:.1f}x)",
            "cut" if after < before else "not cut"]


def measure(rounds: int) -> dict[tuple[str, bool], Rounds]:
    """Cold starts of fresh servers, templates off and on, alternated."""
    results: dict[tuple[str, bool], Rounds] = {}
    with tempfile.TemporaryDirectory(prefix="openfal-bench-cold-") as tmp:
        root = Path(tmp)
        models = root / "models"
        make_tiny("flux", models / HUB_ID)
        for i in range(rounds):
            for templates in (False, True):
                results.setdefault(("echo", templates), []).append(cold_starts(
                    root / f"echo{i}{templates}", ECHO_ARGS, echo_request, templates))
                data_dir = root / f"flux{i}{templates}"
                data_dir.mkdir()
                (data_dir / "models").symlink_to(models)
                results.setdefault(("flux", templates), []).append(cold_starts(
                    data_dir, FLUX_ARGS, flux_request, templates))
    return results


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results = measure(args.rounds)
    imports = statistics.median(import_seconds() for _ in range(args.rounds))
    print(f"Cold starts: first request less the next (median of {args.rounds} fresh servers "
          f"each way, alternated)")
    apps = (("echo", "echo (direct run)"), ("flux", "FLUX, tiny weights (queued)"))
    for key, name in apps:
        report(name, results[key, False], results[key, True])
    print(f"  importing openfal.runner.process in a fresh interpreter: {imports * 1000:.0f} ms")
    return [goal_row(key, results[key, False], results[key, True]) for key, _ in apps]


if __name__ == "__main__":
    main()
