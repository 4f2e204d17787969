"""Fault drills: what a careless client, a tired operator and a deploy do to a server.

Three drills, each against a real ``openfal serve`` on this machine, each printing its
figure beside the bound it must stay within:

1. **Abandoned calls**: 200 direct calls to a 0.5 s app (one request at a time) whose
   clients hang up after 0.1 s; then one caller who waits. Bound: answered within 3 s.
2. **Two servers, one data dir**: a second ``openfal serve`` on a data dir in use. Bound: a
   non-zero exit within 5 s, with one line naming the data dir and the other process.
3. **SIGTERM under load**: four queued 1.5 s requests running and four waiting when the
   server gets SIGTERM; then a restart. Bound: the running four finish in exactly one
   attempt each, the waiting four complete after the restart, none is lost.

Usage::

    python bench/drill_faults.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing, suppress
from pathlib import Path

import httpx

from openfal.testing import ServerProcess

DRILLS = Path(__file__).resolve().parent.parent / "tests" / "apps" / "drills.py"


def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("drill condition not reached")
        time.sleep(0.05)


def report(name: str, figure: str, bound: str, ok: bool) -> bool:
    print(f"{name:<28} {figure:<44} bound: {bound:<36} {'ok' if ok else 'MISSED'}")
    return ok


# 1. Abandoned calls --------------------------------------------------------------------

async def _abandon(client: httpx.AsyncClient, count: int) -> None:
    async def one() -> None:
        with suppress(httpx.TimeoutException):
            await client.post("/openfal/slow-one", json={"seconds": 0.5}, timeout=0.1)

    await asyncio.gather(*(one() for _ in range(count)))


def drill_abandoned(tmp: Path) -> bool:
    with ServerProcess(tmp / "abandoned", ["--no-auth", "--app", f"{DRILLS}::SlowOne"]) as srv:
        with srv.client() as client:  # start the runner first: cold start is not the drill
            client.post("/openfal/slow-one", json={"seconds": 0})

        async def run() -> None:
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(base_url=srv.url, limits=limits) as client:
                await _abandon(client, 200)

        asyncio.run(run())
        started = time.perf_counter()
        with srv.client(timeout=300) as client:
            answer = client.post("/openfal/slow-one", json={"seconds": 0.5})
        waited = time.perf_counter() - started
        with closing(sqlite3.connect(srv.data_dir / "openfal.db")) as conn:
            ran = conn.execute("SELECT count(*) FROM requests WHERE result_status = 200"
                               " AND endpoint_id = 'openfal/slow-one'").fetchone()[0] - 2
    return report("abandoned calls (200)",
                  f"next caller answered in {waited:.2f} s ({answer.status_code}); "
                  f"{max(ran, 0)} abandoned ran", "< 3 s", waited < 3 and answer.is_success)


# 2. Two servers on one data dir ----------------------------------------------------------

def drill_two_servers(tmp: Path) -> bool:
    with ServerProcess(tmp / "shared", ["--no-auth", "--no-builtin", "--app",
                                        f"{DRILLS}::Slow"]) as first:
        started = time.perf_counter()
        second = subprocess.run(
            [sys.executable, "-m", "openfal", "serve", "--port", "0", "--data-dir",
             str(first.data_dir)], capture_output=True, text=True, timeout=60)
        took = time.perf_counter() - started
    lines = second.stderr.strip().splitlines()
    print(f"    second server said: {second.stderr.strip()}")
    ok = (second.returncode != 0 and took < 5 and len(lines) == 1
          and str(first.data_dir) in lines[0] and str(first.pid) in lines[0])
    return report("two servers, one data dir", f"exit {second.returncode} in {took:.2f} s",
                  "non-zero within 5 s, one line", ok)


# 3. SIGTERM under load -------------------------------------------------------------------

def drill_sigterm(tmp: Path) -> bool:
    data_dir = tmp / "sigterm"
    args = ["--no-auth", "--no-builtin", "--app", f"{DRILLS}::Slow"]
    with ServerProcess(data_dir, args) as srv, srv.client() as client:
        ids = [client.post("/queue/openfal/slow", json={"seconds": 1.5}).json()["request_id"]
               for _ in range(8)]

        def running() -> int:
            return sum(len(r["in_flight"]) for r in client.get("/api/runners").json()["runners"])

        wait_until(lambda: running() == 4)
        started = time.perf_counter()
        os.killpg(srv.pid, signal.SIGTERM)
        srv.wait_exit(60)
        drained_in = time.perf_counter() - started
    with ServerProcess(data_dir, args) as srv, srv.client() as client:
        def outcomes(request_id: str) -> list[str]:
            return [a["outcome"] for a in
                    client.get(f"/api/requests/{request_id}/attempts").json()["attempts"]]

        def status(request_id: str) -> str:
            return client.get(f"/queue/openfal/slow/requests/{request_id}/status").json()[
                "status"]

        wait_until(lambda: all(status(i) == "COMPLETED" for i in ids))
        attempts = [outcomes(i) for i in ids]
    once = sum(a == ["ok"] for a in attempts)
    return report("SIGTERM under load", f"drained in {drained_in:.2f} s; {once} of 8 completed "
                  "in one attempt", "8 of 8, one attempt each", once == 8)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        results = [drill(Path(tmp)) for drill in (drill_abandoned, drill_two_servers,
                                                  drill_sigterm)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
