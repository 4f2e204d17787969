"""The many-hosts drill: two gateways and three workers on one PostgreSQL database and one S3
bucket, 500 queued requests. Mid-load one worker and then one gateway are killed (SIGKILL),
and a third worker is frozen (SIGSTOP) past its lease, then resumed (SIGCONT). Every
acknowledged request ends with exactly one committed outcome, its own result; status and
cancel work through either gateway.

Gateway A has worker 1; gateway B has workers 2 and 3. Worker 1 and then gateway A die, so
gateway B must reap what worker 1 held and answer for what gateway A accepted; worker 3 is
frozen while gateway B and worker 2 carry on, and its late results must be refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from openfal.testing import ServerProcess, worker_process
from services import S3Service
from services_pg import PostgresServer

from conftest import wait_for

DRILLS = Path(__file__).parent / "apps" / "drills.py"
DRILL = f"{DRILLS}::Drill"
SLOW = f"{DRILLS}::Slow"  # served by no worker: its requests wait until cancelled
LEASE = 2.0  # seconds: short, so lapsed leases are found within the drill
REQUESTS = 500
WORK_SECONDS = 0.5  # each request's work: 500 of them keep 3 workers busy for 20 s or more
SUBMITTERS = 16  # submissions in flight at once
BUSY_TIMEOUT = 180.0  # a loaded 2-core machine runs 5 servers, 3 runners, a database and S3


def queue_path(app: str, request_id: str = "") -> str:
    return f"/queue/openfal/{app}" + (f"/requests/{request_id}" if request_id else "")


def submit(client: httpx.Client, body: dict, app: str = "drill") -> str:
    response = client.post(queue_path(app), json=body)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def status(client: httpx.Client, request_id: str, app: str = "drill") -> dict:
    response = client.get(queue_path(app, request_id) + "/status")
    assert response.status_code in (200, 202), response.text
    return response.json()


class Database:
    """What the gateways share, read directly (psql) to check the drill's claims."""

    def __init__(self, server: PostgresServer, url: str):
        self.server = server
        self.name = url.rsplit("/", 1)[1]

    def rows(self, query: str) -> list[list[str]]:
        out = self.server.psql(query, self.name)
        return [line.split("|") for line in out.splitlines() if line]

    def value(self, query: str) -> int:
        return int(self.server.psql(query, self.name))

    def count(self, where: str) -> int:
        return self.value(f"SELECT count(*) FROM requests WHERE {where}")

    def held_by(self, worker_id: str) -> dict[str, str]:
        """Attempt id -> request id of what the worker runs now, as the store says."""
        return {attempt: request for attempt, request in self.rows(
            "SELECT attempt_id, id FROM requests WHERE status = 'IN_PROGRESS'"
            f" AND lease_owner = '{worker_id}'")}

    def outcomes(self, attempt_ids: list[str]) -> dict[str, str]:
        listed = ",".join(f"'{a}'" for a in attempt_ids)
        return {attempt: outcome for attempt, outcome in self.rows(
            "SELECT attempt_id, coalesce(outcome, '') FROM attempts"
            f" WHERE attempt_id IN ({listed})")}


class StatusStream:
    """A status stream with logs (``/status/stream?logs=1``) read on a thread."""

    def __init__(self, server: ServerProcess, request_id: str):
        self.events: list[dict] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(server, request_id),
                                        daemon=True)
        self._thread.start()

    def _read(self, server: ServerProcess, request_id: str) -> None:
        try:
            with server.client(timeout=BUSY_TIMEOUT) as client, client.stream(
                    "GET", queue_path("drill", request_id) + "/status/stream",
                    params={"logs": "1"}) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        self.events.append(json.loads(line[5:]))
        except BaseException as exc:  # reported by the test's thread
            self.error = exc

    def messages(self) -> list[str]:
        return [entry["message"] for event in list(self.events)
                for entry in event.get("logs") or []]

    def final(self, timeout: float) -> dict:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the status stream did not end"
        assert self.error is None, f"the status stream failed: {self.error!r}"
        return self.events[-1]


def worker_id(worker: ServerProcess) -> str:
    """The id the worker claims under (it says so when it starts serving)."""
    for line in worker.output:
        found = re.search(r"worker (\S+) serving ", line)
        if found:
            return found.group(1)
    raise AssertionError("the worker did not say its id:\n" + "".join(worker.output))


def assert_cancelled(client: httpx.Client, app: str, request_id: str) -> None:
    """Cancelled, as this gateway tells it: COMPLETED with client_cancelled, a 499 result.
    (A gateway learns what another did from the store's events: within moments.)"""
    seen = wait_for(lambda: (s := status(client, request_id, app))["status"] == "COMPLETED"
                    and s, 30, what=f"{request_id} to be seen completed")
    assert seen["status"] == "COMPLETED" and seen["error_type"] == "client_cancelled", seen
    result = client.get(queue_path(app, request_id))
    assert result.status_code == 499, result.text
    assert result.json()["error_type"] == "client_cancelled"


async def submit_all(gateways: list[ServerProcess]) -> dict[str, int]:
    """Submit the drill's requests over both gateways; request id -> its input's n, for
    every request acknowledged (200 with a request id)."""
    acknowledged: dict[str, int] = {}
    limit = asyncio.Semaphore(SUBMITTERS)
    clients = [httpx.AsyncClient(base_url=g.url, timeout=BUSY_TIMEOUT) for g in gateways]

    async def one(n: int) -> None:
        async with limit:
            client = clients[n % len(clients)]
            response = await client.post(queue_path("drill"),
                                         json={"n": n, "seconds": WORK_SECONDS})
        if response.status_code == 200:
            acknowledged[response.json()["request_id"]] = n

    try:
        await asyncio.gather(*(one(n) for n in range(REQUESTS)))
    finally:
        for client in clients:
            await client.aclose()
    return acknowledged


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[ServerProcess, str], ServerProcess]]:
    workers: list[ServerProcess] = []

    def start(gateway: ServerProcess, name: str) -> ServerProcess:
        worker = worker_process(tmp_path / name, gateway.url, "unused", [DRILL]).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.proc is not None and worker.proc.poll() is None:
            os.killpg(worker.pid, signal.SIGCONT)  # a stopped worker cannot drain
        worker.stop()
        worker.reap_leftovers()


def freeze(worker: ServerProcess, wid: str, db: Database) -> dict[str, str]:
    """SIGSTOP the worker (its process group; its runners, in sessions of their own, go on)
    while the store says it runs something; what it held then."""
    for _ in range(5):
        wait_for(lambda: db.held_by(wid), BUSY_TIMEOUT, 0.1, "the worker to run something")
        os.killpg(worker.pid, signal.SIGSTOP)
        held = db.held_by(wid)
        if held:
            return held
        os.killpg(worker.pid, signal.SIGCONT)  # it finished everything meanwhile: again
    raise AssertionError("could not freeze the worker while it ran something")


def test_many_hosts_drill(start_server, start_worker, postgres_server: PostgresServer,
                          postgres_url: str, s3_bucket: str, s3_env: S3Service,
                          tmp_path: Path) -> None:
    db = Database(postgres_server, postgres_url)
    shared = ("--store", postgres_url, "--files", f"s3://{s3_bucket}/files", "--no-runners",
              "--no-builtin", "--app", DRILL, "--app", SLOW, "--lease-seconds", str(LEASE))
    gateway_a = start_server(*shared, data_dir=tmp_path / "gateway-a")
    gateway_b = start_server(*shared, data_dir=tmp_path / "gateway-b")
    worker_1 = start_worker(gateway_a, "worker-1")
    worker_2 = start_worker(gateway_b, "worker-2")
    worker_3 = start_worker(gateway_b, "worker-3")
    ids = {worker: worker_id(worker) for worker in (worker_1, worker_2, worker_3)}
    acknowledged: dict[str, int] = {}  # request id -> n (drill requests only)
    others = 0  # acknowledged requests beyond the drill's own (cancelled ones)

    with gateway_a.client(timeout=BUSY_TIMEOUT) as client_a, \
            gateway_b.client(timeout=BUSY_TIMEOUT) as client_b:
        # Status and cancel through either gateway: a request running for gateway A's
        # caller, watched and cancelled through gateway B.
        running = submit(client_a, {"n": -1, "seconds": 300, "ticks": 1500})
        others += 1
        stream = StatusStream(gateway_b, running)
        wait_for(lambda: any(m.startswith("drill -1: tick") for m in stream.messages()),
                 BUSY_TIMEOUT, what="the worker's log lines on the other gateway's stream")
        assert status(client_a, running)["status"] == "IN_PROGRESS"
        cancel = client_b.put(queue_path("drill", running) + "/cancel")
        assert cancel.status_code == 202, cancel.text
        assert cancel.json() == {"status": "CANCELLATION_REQUESTED"}
        final = stream.final(BUSY_TIMEOUT)
        assert final["status"] == "COMPLETED" and final["error_type"] == "client_cancelled"
        for client in (client_a, client_b):
            assert_cancelled(client, "drill", running)
        # A waiting request (no worker serves the app) cancelled the same way.
        waiting = submit(client_a, {"seconds": 1}, app="slow")
        others += 1
        assert status(client_b, waiting, "slow")["status"] == "IN_QUEUE"
        cancel = client_b.put(queue_path("slow", waiting) + "/cancel")
        assert cancel.status_code == 202, cancel.text
        for client in (client_a, client_b):
            assert_cancelled(client, "slow", waiting)

        # The load: every request acknowledged (nothing has failed yet).
        acknowledged = asyncio.run(submit_all([gateway_a, gateway_b]))
        assert len(acknowledged) == REQUESTS
        assert sorted(acknowledged.values()) == list(range(REQUESTS))

        # Worker 1 dies mid-load, holding leases: they lapse and the requests are retried.
        wait_for(lambda: db.held_by(ids[worker_1]), BUSY_TIMEOUT, 0.1,
                 "worker 1 to run something")
        assert db.count("status = 'IN_QUEUE'") > 0, "the load is still on"
        worker_1.kill()
        held_by_1 = db.held_by(ids[worker_1])
        wait_for(lambda: not worker_1.tagged_pids(), 30, 0.1,
                 "the killed worker's runners to exit (their socket closed)")
        worker_1.reap_leftovers()

        # Then gateway A dies: gateway B reaps worker 1's leases and answers for A's requests.
        gateway_a.kill()
        assert db.count("status = 'IN_QUEUE'") > 0, "the load is still on"

        # Worker 3 freezes past its lease: its attempts are lost (gateway B's reaper) and
        # retried by worker 2; resumed, its late results are refused.
        frozen = freeze(worker_3, ids[worker_3], db)
        wait_for(lambda: "lost" in db.outcomes(list(frozen)).values(), BUSY_TIMEOUT, 0.1,
                 "a frozen worker's attempt to lose its lease")
        assert db.count("status = 'IN_QUEUE'") + db.count("status = 'IN_PROGRESS'") > 0
        os.killpg(worker_3.pid, signal.SIGCONT)
        wait_for(lambda: any("refused" in line for line in worker_3.output), BUSY_TIMEOUT,
                 0.1, "the resumed worker's late results to be refused")

        # Every acknowledged request ends.
        total = len(acknowledged) + others
        wait_for(lambda: db.count("status = 'COMPLETED'") == total, BUSY_TIMEOUT, 0.2,
                 "every acknowledged request to complete")
        assert db.count("true") == total, "no request the callers were not told of"

        # Exactly one committed outcome each, its own, through the surviving gateway.
        with ThreadPoolExecutor(4) as pool:
            checked = list(pool.map(lambda item: check_request(client_b, *item),
                                    acknowledged.items()))
        assert db.rows("SELECT request_id FROM attempts WHERE outcome = 'ok'"
                       " GROUP BY request_id HAVING count(*) > 1") == []
        assert db.rows("SELECT r.id FROM requests r JOIN attempts a ON a.request_id = r.id"
                       " AND a.attempt_id = r.attempt_id WHERE r.result_status = 200"
                       " AND a.outcome <> 'ok'") == []
        assert db.value("SELECT count(*) FROM attempts WHERE outcome IS NULL") == 0, \
            "every attempt ended"
        keys = set(s3_env.keys(s3_bucket, "files/"))
        for file_id in (file_id for file_id, _ in checked):
            assert f"files/{file_id}" in keys, "the output is in the bucket"

        # Requests that lost an attempt show it: worker 1's (killed) and worker 3's (frozen).
        lost = {request: runner for request, runner in db.rows(
            "SELECT request_id, runner_id FROM attempts WHERE outcome = 'lost'")}
        assert set(held_by_1.values()) <= lost.keys(), "worker 1's attempts were lost"
        assert ids[worker_3] in lost.values(), "the frozen worker's attempts were lost"
        for request_id in lost:
            tries = client_b.get(f"/api/requests/{request_id}/attempts").json()["attempts"]
            outcomes = [attempt["outcome"] for attempt in tries]
            assert "lost" in outcomes and outcomes.count("ok") == 1, tries
            assert tries[-1]["outcome"] == "ok"
            assert tries[-1]["runner_id"] in (ids[worker_2], ids[worker_3])
        print("DEBUG ids", {w.name + str(i): v for i, (w, v) in enumerate(ids.items())})
        print("DEBUG ok by", db.rows("SELECT runner_id, outcome, count(*) FROM attempts GROUP BY 1, 2"))
        print("DEBUG held_by_1", held_by_1, "frozen", frozen)
        print("DEBUG timeline", db.rows("SELECT runner_id, floor(started_at - (SELECT min(started_at) FROM attempts))::int AS t, count(*) FROM attempts GROUP BY 1, 2 ORDER BY 2, 1"))
        print("DEBUG W3 out", "".join(l for l in worker_3.output if "HTTP Request" not in l)[-6000:])
        done_by = {runner for (runner,) in db.rows(
            "SELECT runner_id FROM attempts WHERE outcome = 'ok'")}
        assert done_by == set(ids.values()), "all three workers did some of the work"


def check_request(client: httpx.Client, request_id: str, n: int) -> tuple[str, str]:
    """The request's one outcome is its own result, and its output file is served: the
    output's file id and name."""
    seen = status(client, request_id)
    assert seen["status"] == "COMPLETED" and seen.get("error") is None, seen
    first = client.get(queue_path("drill", request_id))
    again = client.get(queue_path("drill", request_id))
    assert first.status_code == 200, first.text
    assert (again.status_code, again.content) == (200, first.content), "one outcome"
    result = first.json()
    assert result["n"] == n and result["request_id"] == request_id, result
    file_path = urlsplit(result["file"]["url"]).path  # its host may be the dead gateway
    _, files, file_id, name = file_path.split("/")
    assert (files, name) == ("files", f"drill-{n}.txt")
    served = client.get(file_path)
    assert served.status_code == 200 and served.content == f"output of {n}\n".encode()
    return file_id, name
