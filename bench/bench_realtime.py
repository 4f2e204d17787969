"""Benchmark: realtime websocket messages through openfal against a bare websocket echo.

openfal runs each message as a request on the app's runner process (msgpack end to end);
the baseline is a Starlette websocket route echoing msgpack frames on the same server stack
(uvicorn, uvloop, httptools), started in the same command. Measured: the round-trip latency
of one message at a time on one socket (p50, p99, messages/s), and the throughput of
several sockets sending at once. Both servers and the load generator share the machine.
Usage::

    python bench/bench_realtime.py [--messages 2000] [--sockets 8] [--payload 16384]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from openfal.server import bind
from openfal.testing import ServerProcess

APP = Path(__file__).parent / "apps" / "noop.py"
PATH = "/openfal/noop-realtime/realtime"
WARMUP = 50


async def _echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        await websocket.send_bytes(msgpack.packb(msgpack.unpackb(message["bytes"])))


def serve_baseline() -> None:
    """The bare endpoint: prints its URL, then serves until killed."""
    sock = bind("127.0.0.1", 0)
    print(f"openfal listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    app = Starlette(routes=[WebSocketRoute(PATH, _echo)])
    config = uvicorn.Config(app, loop="uvloop", http="httptools", log_level="warning",
                            access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


async def round_trips(url: str, count: int, payload: bytes) -> list[float]:
    async with websockets.connect(url, max_size=None) as ws:
        for n in range(WARMUP):
            await ws.send(msgpack.packb({"image": payload, "n": n}))
            await ws.recv()
        times = []
        for n in range(count):
            started = time.perf_counter()
            await ws.send(msgpack.packb({"image": payload, "n": n}))
            answer = msgpack.unpackb(await ws.recv())
            times.append(time.perf_counter() - started)
            assert answer["n"] == n
        return times


async def throughput(url: str, sockets: int, per_socket: int, payload: bytes) -> float:
    async def one() -> None:
        await round_trips(url, per_socket, payload)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(sockets)))
    return sockets * (per_socket + WARMUP) / (time.perf_counter() - started)


def measure(url: str, args: argparse.Namespace) -> tuple[list[float], float]:
    payload = os.urandom(args.payload)
    times = asyncio.run(round_trips(url, args.messages, payload))
    rate = asyncio.run(throughput(url, args.sockets, args.messages // args.sockets, payload))
    return times, rate


def line(name: str, times: list[float], rate: float) -> str:
    quantiles = statistics.quantiles(times, n=100)
    return (f"  {name:<34} p50 {quantiles[49] * 1000:6.2f} ms  p99 {quantiles[98] * 1000:6.2f} ms"
            f"  one socket {1 / statistics.fmean(times):7.0f} msg/s  "
            f"concurrent {rate:7.0f} msg/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sockets", type=int, default=8)
    parser.add_argument("--payload", type=int, default=16384, help="bytes per frame")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline()
        return
    with tempfile.TemporaryDirectory(prefix="openfal-bench-rt-") as tmp:
        baseline = ServerProcess(Path(tmp) / "baseline", [],
                                 command=[sys.executable, __file__, "--serve-baseline"])
        with baseline:
            base = measure(baseline.url.replace("http", "ws") + PATH, args)
        with ServerProcess(Path(tmp) / "openfal", ["--no-auth", "--app",
                                                   f"{APP}::NoopRealtime"]) as server:
            ours = measure(server.url.replace("http", "ws") + PATH, args)
    print(f"realtime round trips, {args.payload}-byte msgpack frames, {args.messages} messages; "
          f"concurrent: {args.sockets} sockets ({os.cpu_count()} cores)")
    print(line("bare websocket echo (baseline)", *base))
    print(line("openfal realtime, no-op app", *ours))
    added = statistics.median(ours[0]) - statistics.median(base[0])
    print(f"  openfal adds {added * 1000:.2f} ms per message at p50; concurrent throughput "
          f"ratio {ours[1] / base[1]:.2f}")


if __name__ == "__main__":
    main()
