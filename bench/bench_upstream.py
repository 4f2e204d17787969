"""Benchmark what upstream routing adds per request: openfal in front of an openfal upstream
against calling that upstream directly.

Two servers run as separate processes: the *upstream* serves a no-op stand-in at
``fal-ai/kling-video/noop`` (tests/apps/upstream_apps.py), the *front* serves the same id
routed there with ``--config``. The same load generator (bench_gateway's) calls each, at
concurrency 1 and 16, as a direct run and as a queued round trip (submit, the status
stream until COMPLETED, the result), in one run. Usage::

    python bench/bench_upstream.py [--duration 5] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import aiohttp
import uvloop
from bench_gateway import (
    JSON_HEADERS,
    Bench,
    Operation,
    Point,
    Section,
    environment,
    render_markdown,
    render_text,
)

from openfal.testing import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps" / "upstream_apps.py"
NOOP = "fal-ai/kling-video/noop"
BODY = json.dumps({"n": 1}).encode()
CONCURRENCY = (1, 16)
SCENARIOS = ("direct run", "queued round trip")
KEY_ENV = "OPENFAL_BENCH_UPSTREAM_KEY"
# As deployed (keys on), without the per-key limits that would cap the load generator.
UNLIMITED = ["--no-builtin", "--key-concurrency", "0", "--max-waiting-direct", "0"]


# Operations --------------------------------------------------------------------------------

def direct(base_url: str) -> Operation:
    async def operation(session: aiohttp.ClientSession) -> bool:
        async with session.post(f"{base_url}/{NOOP}", data=BODY,
                                headers=JSON_HEADERS) as response:
            return response.status == 200 and await response.json() == {"n": 1}
    return operation


def queued(base_url: str) -> Operation:
    """Submit, follow the status stream until COMPLETED, fetch the result."""
    async def operation(session: aiohttp.ClientSession) -> bool:
        async with session.post(f"{base_url}/queue/{NOOP}", data=BODY,
                                headers=JSON_HEADERS) as response:
            if response.status != 200:
                return False
            handle = await response.json()
        last = b""
        async with session.get(handle["status_url"] + "/stream") as response:
            async for line in response.content:
                if line.startswith(b"data: "):
                    last = line[len(b"data: "):]
        if not last or json.loads(last)["status"] != "COMPLETED":
            return False
        async with session.get(handle["response_url"]) as response:
            return response.status == 200 and await response.json() == {"n": 1}
    return operation


OPERATIONS = {"direct run": direct, "queued round trip": queued}


# Servers -------------------------------------------------------------------------------------

def start_upstream(data_dir: Path) -> ServerProcess:
    server = ServerProcess(data_dir, [*UNLIMITED, "--app", f"{APPS}::KlingVideo"],
                           name="upstream").start()
    server.headers = {"authorization": f"Key {server.admin_key}"}
    return server


def start_front(data_dir: Path, upstream: ServerProcess) -> ServerProcess:
    config = data_dir.parent / "openfal.toml"
    config.write_text(f'[[upstream]]\nname = "upstream"\nurl = "{upstream.url}"\n'
                      f'key_env = "{KEY_ENV}"\nendpoints = ["fal-ai/kling-video/*"]\n')
    # The front's runners read the upstream's key from the environment they inherit.
    os.environ[KEY_ENV] = upstream.admin_key
    server = ServerProcess(data_dir, [*UNLIMITED, "--config", str(config),
                                      "--app", f"{APPS}::RoutedKling"], name="front").start()
    server.headers = {"authorization": f"Key {server.admin_key}"}
    return server


async def measure_all(bench: Bench, upstream: ServerProcess, front: ServerProcess) -> None:
    for server in (upstream, front):  # runners up before any timing
        async with aiohttp.ClientSession(headers=server.headers) as session:
            if not await direct(server.url)(session):
                raise RuntimeError(f"the no-op endpoint failed on the {server.name}")
    for scenario in SCENARIOS:
        for concurrency in CONCURRENCY:
            for server in (upstream, front):
                await bench.measure(scenario, server, concurrency,
                                    OPERATIONS[scenario](server.url))


# Report --------------------------------------------------------------------------------------

def results_section(bench: Bench) -> Section:
    headers = ["scenario", "called", "conc.", "requests", "errors", "req/s", "p50 ms",
               "p95 ms"]
    rows = [[p.scenario, _called(p), str(p.concurrency), str(p.completed),
             str(p.run.errors), f"{p.throughput:.0f}", f"{p.percentile_ms(0.5):.2f}",
             f"{p.percentile_ms(0.95):.2f}"] for p in bench.points]
    return Section("Results", headers, rows)


def _called(point: Point) -> str:
    return "upstream directly" if point.target == "upstream" else "openfal → upstream"


def overhead_section(bench: Bench) -> Section:
    headers = ["scenario", "conc.", "p50 added ms", "p95 added ms", "p50 ratio",
               "throughput ratio"]
    rows = []
    for scenario in SCENARIOS:
        for concurrency in CONCURRENCY:
            alone = bench.find(scenario, "upstream", concurrency)
            routed = bench.find(scenario, "front", concurrency)
            rows.append([scenario, str(concurrency),
                         f"{routed.percentile_ms(0.5) - alone.percentile_ms(0.5):+.2f}",
                         f"{routed.percentile_ms(0.95) - alone.percentile_ms(0.95):+.2f}",
                         f"{routed.percentile_ms(0.5) / alone.percentile_ms(0.5):.2f}",
                         f"{routed.throughput / alone.throughput:.2f}"])
    return Section("What routing adds per request", headers, rows)


# Entry point ---------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds measured per point (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of unmeasured load before each point (default 1)")
    parser.add_argument("--markdown", type=Path, help="also write the report as markdown here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    bench = Bench(args.duration, args.warmup)
    intro = [*environment(), f"{args.duration:g} s measured per point after {args.warmup:g} s "
             "of warm-up; closed-loop workers, one keep-alive connection each"]
    print("\n".join(intro), flush=True)
    with tempfile.TemporaryDirectory(prefix="openfal-bench-upstream-") as tmp:
        upstream = start_upstream(Path(tmp) / "upstream")
        try:
            front = start_front(Path(tmp) / "front", upstream)
            try:
                uvloop.run(measure_all(bench, upstream, front))
            finally:
                front.stop()
                front.reap_leftovers()
        finally:
            upstream.stop()
            upstream.reap_leftovers()
    sections = [results_section(bench), overhead_section(bench)]
    print(render_text(sections), end="")
    if args.markdown is not None:
        args.markdown.write_text(render_markdown(intro, sections))


if __name__ == "__main__":
    sys.exit(main())
