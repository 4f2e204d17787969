"""Benchmark openfal's gateway against a bare Starlette/uvicorn echo endpoint.

One command measures, next to each other and against the same load generator:

* direct runs (``POST /openfal/echo``) against a bare ASGI echo endpoint served by the same
  stack (Starlette on uvicorn with uvloop and httptools), and against the peer, Cog's server
  (``python -m cog.server.http``, cog 0.23.1) serving the no-op predictor
  ``bench/apps/cog_echo.py``, at several concurrencies;
* queued round trips, polling (submit, poll the status until it is 200, fetch the result)
  and streamed (submit, follow the status stream until COMPLETED, fetch the result), status
  polls of finished requests, and how fast the queue accepts durable submits;
* issue 12's goals, each as a ratio against the bare endpoint in the same run.

The servers run as separate processes on this machine, so the load generator competes with
them for the same cores. Usage::

    python bench/bench_gateway.py [--duration 5] [--markdown FILE] [--cog-python PATH]

Cog pins its own dependencies, so it lives in a virtual environment of its own, never in
openfal's: by default the bench makes one (``python -m venv`` and ``pip install cog==0.23.1``)
under ``~/.cache/openfal-bench/`` and reuses it; ``--cog-python`` names another one's
interpreter; ``--no-cog`` leaves Cog out. When Cog cannot be had the bench says why and
measures the other servers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import shlex
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import starlette
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from openfal.server import bind
from openfal.testing import ServerProcess

DIRECT_CONCURRENCY = (1, 16, 64)
STREAMED = "streamed round trip"
STATUS_POLL = "status poll"
ECHO = "openfal/echo"
PROMPT = "hello"
BODY = json.dumps({"prompt": PROMPT}).encode()
COG_VERSION = "0.23.1"
COG_BODY = json.dumps({"input": {"prompt": PROMPT}}).encode()
COG_PREDICTOR = Path(__file__).resolve().parent / "apps" / "cog_echo.py"
# Cog has no queue: a prediction that finds every slot busy is refused at once (409), and a
# closed-loop client's next request can arrive before its previous answer's slot is free.
# With this many slots none is refused at the bench's concurrencies, as none is by openfal,
# whose echo runner takes 64 requests at once and queues the rest.
COG_SLOTS = 4 * max(DIRECT_CONCURRENCY)
COG_START_TIMEOUT = 120.0
JSON_HEADERS = {"content-type": "application/json"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NPROC = len(os.sched_getaffinity(0))

Operation = Callable[[aiohttp.ClientSession], Awaitable[bool]]


# The baseline server ---------------------------------------------------------------------

async def _baseline_echo(request: Request) -> JSONResponse:
    payload = await request.json()
    return JSONResponse({"text": payload["prompt"]})


def serve_baseline() -> None:
    """Serve the bare echo endpoint the way openfal serves its gateway, until SIGTERM."""
    app = Starlette(routes=[Route("/echo", _baseline_echo, methods=["POST"])])
    sock = bind("127.0.0.1", 0)  # listening already: early connections wait in the backlog
    print(f"baseline listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", log_level="warning",
                            access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


# The peer: Cog ------------------------------------------------------------------------------

def default_cog_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "openfal-bench" / f"cog-{COG_VERSION}"


def _cog_version(python: Path) -> str | None:
    """The cog version ``python`` imports (with coglet, its server), or None."""
    try:
        done = subprocess.run(
            [str(python), "-c", "import cog, coglet; print(cog.__version__)"],
            capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def find_cog(cog_python: Path | None) -> tuple[Path | None, str]:
    """The interpreter of a virtual environment with cog installed, making the default one
    when it is missing; or None and why not."""
    if cog_python is not None:
        version = _cog_version(cog_python)
        if version is None:
            return None, f"{cog_python} cannot import cog and coglet"
        if version != COG_VERSION:
            print(f"note: {cog_python} has cog {version}, not {COG_VERSION}", flush=True)
        return cog_python, version
    venv = default_cog_venv()
    python = venv / "bin" / "python"
    by_hand = (f"make one by hand: {shlex.quote(sys.executable)} -m venv {venv} && "
               f"{venv}/bin/pip install cog=={COG_VERSION} (or pass --cog-python PATH)")
    if _cog_version(python) is None:
        print(f"installing cog=={COG_VERSION} into its own venv, {venv}", flush=True)
        for command in ([sys.executable, "-m", "venv", "--clear", str(venv)],
                        [str(python), "-m", "pip", "install", "--quiet",
                         "--disable-pip-version-check", f"cog=={COG_VERSION}"]):
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return None, f"{shlex.join(command)}: {exc}; {by_hand}"
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["failed"])[-1]
                return None, f"{shlex.join(command)}: {last}; {by_hand}"
    version = _cog_version(python)
    if version is None:
        return None, f"{python} cannot import cog and coglet after installing; {by_hand}"
    return python, version


COG_SCHEMA = {  # what `cog build` writes: Cog validates every input against it
    "openapi": "3.0.2",
    "info": {"title": "Cog", "version": "0.1.0"},
    "paths": {},
    "components": {"schemas": {
        "Input": {"type": "object", "title": "Input", "required": ["prompt"],
                  "properties": {"prompt": {"type": "string", "title": "Prompt",
                                            "description": "Text to send back.",
                                            "x-order": 0}}},
        "Output": {"type": "string", "title": "Output"},
    }},
}


def cog_server(data_dir: Path, python: Path) -> ServerProcess:
    """Cog's server without Docker, as its image runs it (``python -m cog.server.http``, the
    predictor named by ``COG_PREDICT_TYPE_STUB``, the input schema in the working directory's
    ``.cog/``), on a free port. It serves from a Rust process (coglet) that runs the predictor
    in a Python worker process it starts with the ``python`` on its PATH: the venv's.
    Its log level is ``warn``, like the other servers': at ``info`` it logs every prediction."""
    workdir = data_dir / "cog"
    (workdir / ".cog").mkdir(parents=True)
    (workdir / ".cog" / "openapi_schema.json").write_text(json.dumps(COG_SCHEMA))
    with closing(socket.socket()) as sock:  # a free port (Cog takes a number, not a socket)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = [f"PATH={python.parent}:{os.environ.get('PATH', '')}", f"PORT={port}",
           f"COG_PREDICT_TYPE_STUB={COG_PREDICTOR}:Runner",
           f"COG_MAX_CONCURRENCY={COG_SLOTS}", "COG_LOG_LEVEL=warn"]
    # The shell says where Cog will listen (ServerProcess waits for that line), then
    # becomes Cog's server, so that the server process is Cog's own.
    script = 'cd "$0" && echo "cog listening on http://127.0.0.1:$PORT" && exec "$@"'
    command = ["env", *env, "sh", "-c", script, str(workdir), str(python), "-m",
               "cog.server.http", "--host", "127.0.0.1"]
    return ServerProcess(workdir, [], name="cog", command=command)


async def first_cog(server: ServerProcess) -> None:
    """One prediction, which Cog answers once its predictor's setup has finished."""
    deadline = time.perf_counter() + COG_START_TIMEOUT
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.post(f"{server.url}/predictions", data=COG_BODY,
                                        headers=JSON_HEADERS) as response:
                    body = await response.json(content_type=None)
                    if response.status == 200 and body.get("output") == PROMPT:
                        return
                    answer = f"{response.status}: {body}"
            except aiohttp.ClientError as exc:
                answer = repr(exc)
            if time.perf_counter() > deadline:
                raise RuntimeError(f"cog did not answer: {answer}\n" + "".join(server.output))
            await asyncio.sleep(0.2)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _processes_busy_seconds() -> float:
    """CPU seconds all processes on this machine have used (interrupts aside), summed over
    its cores."""
    user, nice, system = map(int, Path("/proc/stat").read_text().split(maxsplit=4)[1:4])
    return (user + nice + system) / CLOCK_TICKS


@dataclass
class Usage:
    """CPU seconds used by a server, its runners, this load generator and other processes."""

    server: float = 0.0
    runners: float = 0.0
    client: float = 0.0
    others: float = 0.0

    @classmethod
    def sample(cls, server: ServerProcess) -> Usage:
        usage = cls(client=time.process_time())
        for pid in server.tagged_pids():
            try:
                seconds = _cpu_seconds(pid)
            except OSError:
                continue
            if pid == server.pid:
                usage.server += seconds
            else:
                usage.runners += seconds
        usage.others = _processes_busy_seconds() - usage.server - usage.runners - usage.client
        return usage

    def __sub__(self, earlier: Usage) -> Usage:
        return Usage(self.server - earlier.server, self.runners - earlier.runners,
                     self.client - earlier.client, self.others - earlier.others)


# Load generation -------------------------------------------------------------------------

@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0


async def drive(session: aiohttp.ClientSession, operation: Operation, concurrency: int,
                duration: float) -> Run:
    """``concurrency`` closed-loop workers repeat ``operation`` for ``duration`` seconds."""
    run = Run()
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            if await operation(session):
                run.latencies.append(time.perf_counter() - started)
            else:
                run.errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.elapsed = time.perf_counter() - started
    return run


def direct(url: str, body: bytes = BODY) -> Operation:
    async def operation(session: aiohttp.ClientSession) -> bool:
        async with session.post(url, data=body, headers=JSON_HEADERS) as response:
            await response.read()
            return response.status == 200
    return operation


@dataclass
class QueueClient:
    """Drives openfal's queue API and counts submits acknowledged, round trips and polls."""

    base_url: str
    poll_interval: float = 0.0
    accepted: int = 0
    trips: int = 0
    polls: int = 0
    backlog: int = 0  # requests waiting ahead of the latest one accepted

    async def submit(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        async with session.post(f"{self.base_url}/queue/{ECHO}", data=BODY,
                                headers=JSON_HEADERS) as response:
            if response.status != 200:
                return None
            self.accepted += 1
            handle = await response.json()
            self.backlog = handle["queue_position"]
            return handle

    async def submit_only(self, session: aiohttp.ClientSession) -> bool:
        return await self.submit(session) is not None

    async def round_trip(self, session: aiohttp.ClientSession) -> bool:
        self.trips += 1
        handle = await self.submit(session)
        if handle is None or not await self._until_completed(session, handle["status_url"]):
            return False
        async with session.get(handle["response_url"]) as response:
            return response.status == 200 and (await response.json())["text"] == PROMPT

    async def streamed_round_trip(self, session: aiohttp.ClientSession) -> bool:
        """Submit, follow the status stream (server-sent events) until it says COMPLETED,
        fetch the result: three requests however long the request takes."""
        self.trips += 1
        handle = await self.submit(session)
        if handle is None:
            return False
        async with session.get(handle["status_url"] + "/stream") as response:
            if response.status != 200:
                return False
            completed = False
            async for line in response.content:
                if line.startswith(b"data:") and b'"COMPLETED"' in line:
                    completed = True
                    break
        if not completed:
            return False
        async with session.get(handle["response_url"]) as response:
            return response.status == 200 and (await response.json())["text"] == PROMPT

    async def finished_status_poller(self, session: aiohttp.ClientSession,
                                     count: int) -> Operation:
        """An operation polling the status of ``count`` finished requests in turn (what
        most of a polling client's requests are)."""
        handles = [await self.submit(session) for _ in range(count)]
        urls = [handle["status_url"] for handle in handles if handle is not None]
        for url in urls:
            await self._until_completed(session, url)
        turn = itertools.count()

        async def poll(session: aiohttp.ClientSession) -> bool:
            async with session.get(urls[next(turn) % len(urls)]) as response:
                await response.read()
                return response.status == 200
        return poll

    async def _until_completed(self, session: aiohttp.ClientSession, status_url: str) -> bool:
        """Poll the status every ``poll_interval`` seconds (0: as soon as an answer is in)."""
        while True:
            self.polls += 1
            async with session.get(status_url) as response:
                await response.read()
                if response.status != 202:
                    return response.status == 200
            if self.poll_interval:
                await asyncio.sleep(self.poll_interval)


# Measurement points ----------------------------------------------------------------------

@dataclass
class Point:
    scenario: str
    target: str
    concurrency: int
    run: Run
    usage: Usage
    has_runners: bool

    @property
    def completed(self) -> int:
        return len(self.run.latencies)

    @property
    def throughput(self) -> float:
        return self.completed / self.run.elapsed

    def percentile_ms(self, fraction: float) -> float:
        """Nearest-rank percentile of the latencies, in milliseconds."""
        ordered = sorted(self.run.latencies)
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] * 1000

    def per_request_us(self, seconds: float) -> float:
        return seconds / max(1, self.completed) * 1e6


@dataclass
class Bench:
    duration: float
    warmup: float
    points: list[Point] = field(default_factory=list)

    async def measure(self, scenario: str, server: ServerProcess, concurrency: int,
                      operation: Operation, has_runners: bool = True) -> None:
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         headers=server.headers) as session:
            await drive(session, operation, concurrency, self.warmup)
            before = Usage.sample(server)
            run = await drive(session, operation, concurrency, self.duration)
            usage = Usage.sample(server) - before
        if not run.latencies:
            raise RuntimeError(f"{scenario} on {server.name}: no request succeeded")
        point = Point(scenario, server.name, concurrency, run, usage, has_runners)
        self.points.append(point)
        print(f"  {scenario:<22} {server.name:<9} c={concurrency:<4} "
              f"{point.throughput:8.0f} req/s  p50 {point.percentile_ms(0.5):7.2f} ms",
              flush=True)

    def find(self, scenario: str, target: str, concurrency: int) -> Point:
        return next(p for p in self.points if (p.scenario, p.target, p.concurrency)
                    == (scenario, target, concurrency))

    def has(self, target: str) -> bool:
        return any(p.target == target for p in self.points)


async def first_echo(server: ServerProcess) -> None:
    """One direct run, which returns once the echo app's runner is up and has served it."""
    async with aiohttp.ClientSession(headers=server.headers) as session, session.post(
            f"{server.url}/{ECHO}", data=BODY, headers=JSON_HEADERS) as response:
        body = await response.json()
        if response.status != 200 or body != {"text": PROMPT}:
            raise RuntimeError(f"echo answered {response.status}: {body}")


async def run_all(bench: Bench, baseline: ServerProcess, openfal: ServerProcess,
                  cog: ServerProcess | None, queue: QueueClient, queue_concurrency: int) -> float:
    """Measure every point; return the rate at which the queue completed requests while
    they were submitted as fast as it accepted them."""
    await first_echo(openfal)
    if cog is not None:
        try:
            await first_cog(cog)
        except RuntimeError as exc:
            print(f"cog: not measured: {exc}", flush=True)
            cog = None
    for concurrency in DIRECT_CONCURRENCY:
        await bench.measure("direct run", baseline, concurrency, direct(f"{baseline.url}/echo"),
                            has_runners=False)
        await bench.measure("direct run", openfal, concurrency, direct(f"{openfal.url}/{ECHO}"))
        if cog is not None:
            await bench.measure("direct run", cog, concurrency,
                                direct(f"{cog.url}/predictions", COG_BODY))
    for concurrency in (1, queue_concurrency):
        queue.trips = queue.polls = 0  # so that they count the last point's round trips
        await bench.measure("queued round trip", openfal, concurrency, queue.round_trip)
    polls, trips = queue.polls, queue.trips
    for concurrency in (1, queue_concurrency):
        await bench.measure(STREAMED, openfal, concurrency, queue.streamed_round_trip)
    async with aiohttp.ClientSession(headers=openfal.headers) as session:
        poll = await queue.finished_status_poller(session, queue_concurrency)
    queue.polls, queue.trips = polls, trips
    await bench.measure(STATUS_POLL, openfal, queue_concurrency, poll, has_runners=False)
    accepted, started = queue.accepted, time.perf_counter()
    await bench.measure("queue submit only", openfal, queue_concurrency, queue.submit_only)
    return (queue.accepted - accepted - queue.backlog) / (time.perf_counter() - started)


def openfal_server(data_dir: Path) -> ServerProcess:
    """``openfal serve`` as deployed (API keys on), without the per-key limits on running
    and waiting requests, so that the load generator's concurrency reaches the app."""
    return ServerProcess(data_dir, ["--key-concurrency", "0", "--max-waiting-direct", "0"])


def admin_key(data_dir: Path) -> str:
    """The first ADMIN key, which a server starting on an empty data dir writes there."""
    return (data_dir / "admin.key").read_text().strip()


def stored_queue_requests(data_dir: Path) -> int:
    with closing(sqlite3.connect(data_dir / "openfal.db")) as conn:
        return conn.execute("SELECT count(*) FROM requests WHERE mode = 'queue'").fetchone()[0]


# Report ----------------------------------------------------------------------------------

@dataclass
class Section:
    title: str
    headers: list[str]
    rows: list[list[str]]


def _cpu_columns(point: Point) -> list[str]:
    usage = point.usage
    runners = f"{point.per_request_us(usage.runners):.0f}" if point.has_runners else "-"
    others = max(0.0, usage.others) / point.run.elapsed / NPROC
    return [f"{point.per_request_us(usage.server):.0f}", runners,
            f"{point.per_request_us(usage.client):.0f}", f"{others:.0%}"]


def results_section(bench: Bench) -> Section:
    headers = ["scenario", "target", "conc.", "requests", "errors", "req/s", "p50 ms", "p99 ms",
               "server CPU µs/req", "runner CPU µs/req", "client CPU µs/req",
               "other processes' CPU"]
    rows = [[p.scenario, p.target, str(p.concurrency), str(p.completed), str(p.run.errors),
             f"{p.throughput:.0f}", f"{p.percentile_ms(0.5):.2f}", f"{p.percentile_ms(0.99):.2f}",
             *_cpu_columns(p)]
            for p in bench.points]
    return Section("Results", headers, rows)


def direct_section(bench: Bench) -> Section:
    rows = []
    for concurrency in DIRECT_CONCURRENCY:
        base = bench.find("direct run", "baseline", concurrency)
        ours = bench.find("direct run", "openfal", concurrency)
        rows.append([str(concurrency),
                     f"{ours.percentile_ms(0.5) - base.percentile_ms(0.5):+.2f}",
                     f"{ours.percentile_ms(0.99) - base.percentile_ms(0.99):+.2f}",
                     f"{ours.throughput / base.throughput:.2f}"])
    return Section("Direct run: openfal against the bare endpoint",
                   ["conc.", "p50 overhead ms", "p99 overhead ms", "throughput ratio"], rows)


def peers_section(bench: Bench) -> Section:
    """The three servers side by side: throughput at the highest concurrency, latency at 1,
    and the CPU each spends per request (all its processes: server and runners)."""
    top = max(DIRECT_CONCURRENCY)
    base = bench.find("direct run", "baseline", top)
    rows = []
    for target in ("baseline", "openfal", "cog"):
        if not bench.has(target):
            continue
        loaded = bench.find("direct run", target, top)
        single = bench.find("direct run", target, 1)
        usage = loaded.usage
        rows.append([target, f"{loaded.throughput:.0f}",
                     f"{loaded.throughput / base.throughput:.2f}",
                     f"{single.percentile_ms(0.5):.2f}",
                     f"{loaded.per_request_us(usage.server + usage.runners):.0f}",
                     f"{single.per_request_us(single.usage.server + single.usage.runners):.0f}"])
    return Section("Direct run: the bare endpoint, openfal and Cog",
                   ["target", f"req/s c={top}", "÷ bare endpoint", "p50 ms c=1",
                    f"CPU µs/req c={top} (server + runners)", "CPU µs/req c=1"], rows)


def queue_section(bench: Bench, queue: QueueClient, processed: float, stored: int,
                  concurrency: int) -> Section:
    trip = bench.find("queued round trip", "openfal", concurrency)
    single = bench.find("queued round trip", "openfal", 1)
    submit = bench.find("queue submit only", "openfal", concurrency)
    direct_ours = bench.find("direct run", "openfal", max(DIRECT_CONCURRENCY))
    direct_base = bench.find("direct run", "baseline", max(DIRECT_CONCURRENCY))
    direct_single = bench.find("direct run", "openfal", 1)
    rows = [
        [f"round trip p50 at c=1 (direct run at c=1: {direct_single.percentile_ms(0.5):.2f} ms)",
         f"{single.percentile_ms(0.5):.2f} ms"],
        [f"round trips/s at c={concurrency}", f"{trip.throughput:.0f}"],
        [f"  ÷ openfal direct runs/s at c={direct_ours.concurrency}",
         f"{trip.throughput / direct_ours.throughput:.2f}"],
        [f"  ÷ bare endpoint req/s at c={direct_base.concurrency}",
         f"{trip.throughput / direct_base.throughput:.2f}"],
        [f"submits accepted/s at c={concurrency}", f"{submit.throughput:.0f}"],
        ["  requests completed/s meanwhile (≈ accepted - backlog left)", f"{processed:.0f}"],
        [f"status polls per round trip at c={concurrency}",
         f"{queue.polls / max(1, queue.trips):.1f}"],
        ["queue requests acknowledged / found in the store after shutdown",
         f"{queue.accepted} / {stored}"],
    ]
    return Section("Queue", ["measure", "value"], rows)


def goals_section(bench: Bench, concurrency: int) -> Section:
    """Issue 12's goals, each a ratio against the bare endpoint measured in this run."""
    top = max(DIRECT_CONCURRENCY)
    base, ours = bench.find("direct run", "baseline", top), bench.find("direct run", "openfal", top)
    overhead = (bench.find("direct run", "openfal", 1).percentile_ms(0.5)
                - bench.find("direct run", "baseline", 1).percentile_ms(0.5))
    base_cpu = base.per_request_us(base.usage.server)
    ours_cpu = ours.per_request_us(ours.usage.server + ours.usage.runners)
    poll = bench.find(STATUS_POLL, "openfal", concurrency)
    poll_cpu = poll.per_request_us(poll.usage.server)
    streamed = bench.find(STREAMED, "openfal", concurrency).throughput

    def goal(text: str, measured: str, met: bool) -> list[str]:
        return [text, measured, "met" if met else "missed"]

    rows = [
        goal(f"direct runs/s at c={top} >= 0.5x the bare endpoint's",
             f"{ours.throughput / base.throughput:.2f}x "
             f"({ours.throughput:.0f} / {base.throughput:.0f})",
             ours.throughput >= 0.5 * base.throughput),
        goal(f"direct run CPU per request (server + runner) at c={top} <= 3x the bare "
             "endpoint's", f"{ours_cpu / base_cpu:.1f}x ({ours_cpu:.0f} / {base_cpu:.0f} µs)",
             ours_cpu <= 3 * base_cpu),
        goal("direct run adds <= 0.5 ms at p50 (c=1)", f"{overhead:+.2f} ms", overhead <= 0.5),
        goal(f"server CPU per status poll (c={concurrency}) <= 1.5x a bare request's",
             f"{poll_cpu / base_cpu:.1f}x ({poll_cpu:.0f} / {base_cpu:.0f} µs)",
             poll_cpu <= 1.5 * base_cpu),
        goal(f"submit + status stream + result round trips/s at c={concurrency} >= 1,000",
             f"{streamed:.0f}/s", streamed >= 1000),
    ]
    return Section("Goals (issue 12)", ["goal", "measured", "verdict"], rows)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _revision() -> str:
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes" if dirty else "")


def environment() -> list[str]:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [f"nproc: {NPROC} ({_cpu_model()}); the load generator and "
            "the servers share these cores",
            f"load average before the run: {load}",
            f"openfal revision: {_revision()}",
            f"python: {platform.python_version()} on {platform.platform()}",
            f"uvicorn {uvicorn.__version__}, starlette {starlette.__version__}, "
            f"aiohttp {aiohttp.__version__}, uvloop {uvloop.__version__}"]


def render_text(sections: list[Section]) -> str:
    lines: list[str] = []
    for section in sections:
        widths = [max(len(row[i]) for row in [section.headers, *section.rows])
                  for i in range(len(section.headers))]
        lines += ["", section.title,
                  "  ".join(h.ljust(w) for h, w in zip(section.headers, widths, strict=True)),
                  "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                  for row in section.rows]
    return "\n".join(lines) + "\n"


def render_markdown(intro: list[str], sections: list[Section]) -> str:
    lines = [f"- {line}" for line in intro]
    for section in sections:
        lines += ["", f"### {section.title}", "",
                  "| " + " | ".join(section.headers) + " |",
                  "|" + "|".join("---" for _ in section.headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in section.rows]
    return "\n".join(lines) + "\n"


# Entry point -----------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds measured per point (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of unmeasured load before each point (default 1)")
    parser.add_argument("--queue-concurrency", type=int, default=64,
                        help="workers for the queue's throughput points (default 64)")
    parser.add_argument("--poll-interval", type=float, default=0.0,
                        help="seconds between status polls of a queued request "
                        "(default 0: poll again as soon as the answer is in)")
    parser.add_argument("--markdown", type=Path, help="also write the report as markdown here")
    parser.add_argument("--cog-python", type=Path,
                        help="python of a venv with cog installed (default: one the bench makes "
                        f"under {default_cog_venv()}); make one with `python -m venv DIR && "
                        f"DIR/bin/pip install cog=={COG_VERSION}`")
    parser.add_argument("--no-cog", action="store_true", help="leave Cog out")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def bench_main(args: argparse.Namespace) -> Section:
    """Every point, printed; the goals' section is returned too."""
    bench = Bench(args.duration, args.warmup)
    intro = [*environment(), f"{args.duration:g} s measured per point after {args.warmup:g} s "
             "of warm-up; closed-loop workers, one keep-alive connection each"]
    cog_python, cog_note = (None, "left out (--no-cog)") if args.no_cog else find_cog(
        args.cog_python)
    intro.append(f"cog {cog_note}, in {cog_python.parent.parent}" if cog_python is not None
                 else f"cog: not measured: {cog_note}")
    print("\n".join(intro), flush=True)
    with tempfile.TemporaryDirectory(prefix="openfal-bench-") as tmp, ExitStack() as stack:
        data_dir = Path(tmp)
        baseline_server = ServerProcess(data_dir / "baseline", [], name="baseline",
                                        command=[sys.executable, __file__, "--serve-baseline"])
        baseline = stack.enter_context(baseline_server)
        openfal = stack.enter_context(openfal_server(data_dir))
        cog = None
        if cog_python is not None:
            try:
                cog = stack.enter_context(cog_server(data_dir, cog_python))
            except RuntimeError as exc:  # it did not start: the others are still measured
                print(f"cog: not measured: {exc}", flush=True)
        openfal.headers = {"authorization": f"Key {admin_key(data_dir)}"}
        queue = QueueClient(openfal.url, args.poll_interval)
        processed = uvloop.run(run_all(bench, baseline, openfal, cog, queue,
                                       args.queue_concurrency))
        stack.close()
        stored = stored_queue_requests(data_dir)
    sections = [results_section(bench), direct_section(bench), peers_section(bench),
                queue_section(bench, queue, processed, stored, args.queue_concurrency),
                goals_section(bench, args.queue_concurrency)]
    print(render_text(sections), end="")
    if args.markdown is not None:
        args.markdown.write_text(render_markdown(intro, sections))
    return sections[-1]


def main() -> None:
    args = parse_args()
    if args.serve_baseline:
        serve_baseline()
    else:
        bench_main(args)


if __name__ == "__main__":
    main()
