"""The many-hosts drill: two gateways and three workers on one PostgreSQL database and one S3
bucket, 500 queued requests. Mid-load one worker and then one gateway are killed (SIGKILL),
and a third worker is frozen (SIGSTOP) past its lease, then resumed (SIGCONT). Every
acknowledged request ends with exactly one committed outcome, its own result; status and
cancel work through either gateway.

Gateway A has worker 1; gateway B has workers 2 and 3. Worker 1 and then gateway A die, so
gateway B reaps what worker 1 held and answers for what gateway A accepted; worker 3 is
frozen while gateway B and worker 2 carry on, its late results are refused, and once resumed
it takes work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from openfal.testing import ServerProcess
from services import S3Service
from services_pg import PostgresServer

from conftest import wait_for

DRILLS = Path(__file__).parent / "apps" / "drills.py"
DRILL = f"{DRILLS}::Drill"
SLOW = f"{DRILLS}::Slow"  # served by no worker: its requests wait until cancelled
LEASE = 2.0  # seconds: short, so lapsed leases are found within the drill
REQUESTS = 500
WORK_SECONDS = 0.5  # each request's work: 3 workers of 4 slots need 20 s or more for all
SUBMITTERS = 16  # submissions in flight at once
# A 2-core machine runs 2 gateways, 3 workers, their runners, PostgreSQL and S3 here.
STEP_TIMEOUT = 60.0  # for one step of the drill
LOAD_TIMEOUT = 150.0  # for the whole load to be done


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


def worker_id(worker: ServerProcess) -> str:
    """The id the worker claims under (it says so when it starts serving)."""
    for line in worker.output:
        found = re.search(r"worker (\S+) serving ", line)
        if found:
            return found.group(1)
    raise AssertionError("the worker did not say its id:\n" + "".join(worker.output))


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

    def held_by(self, worker: str) -> dict[str, str]:
        """Attempt id -> request id of what the worker runs now, as the store says."""
        return dict(self.rows("SELECT attempt_id, id FROM requests WHERE status = 'IN_PROGRESS'"
                              f" AND lease_owner = '{worker}'"))

    def outcomes(self, attempt_ids: list[str]) -> dict[str, str]:
        """Attempt id -> how it ended ('' while it runs)."""
        listed = ",".join(f"'{attempt}'" for attempt in attempt_ids)
        return dict(self.rows("SELECT attempt_id, coalesce(outcome, '') FROM attempts"
                              f" WHERE attempt_id IN ({listed})"))


class StatusStream:
    """A status stream with logs (``/status/stream?logs=1``), read on a thread."""

    def __init__(self, server: ServerProcess, request_id: str):
        self.events: list[dict] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(server, request_id),
                                        daemon=True)
        self._thread.start()

    def _read(self, server: ServerProcess, request_id: str) -> None:
        try:
            with server.client(timeout=LOAD_TIMEOUT) as client, client.stream(
                    "GET", queue_path("drill", request_id) + "/status/stream",
                    params={"logs": "1"}) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        self.events.append(json.loads(line[5:]))
        except BaseException as exc:  # reported on the test's thread
            self.error = exc

    def messages(self) -> list[str]:
        return [entry["message"] for event in list(self.events)
                for entry in event.get("logs") or []]

    def final(self, timeout: float) -> dict:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the status stream did not end"
        assert self.error is None, f"the status stream failed: {self.error!r}"
        return self.events[-1]


def assert_cancelled(client: httpx.Client, app: str, request_id: str) -> None:
    """Cancelled, as this gateway tells it: COMPLETED with client_cancelled, a 499 result.
    (A gateway learns what another did from the store's events: within moments.)"""
    seen = wait_for(lambda: (s := status(client, request_id, app))["status"] == "COMPLETED"
                    and s, STEP_TIMEOUT, what=f"{request_id} to be seen completed")
    assert seen["error_type"] == "client_cancelled", seen
    result = client.get(queue_path(app, request_id))
    assert result.status_code == 499, result.text
    assert result.json()["error_type"] == "client_cancelled"


@contextlib.contextmanager
def outputs_on_failure(processes: list[ServerProcess]) -> Iterator[None]:
    """On failure, print what each process said last (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        for process in processes:
            print(f"----- {process.name} {process.url} -----\n"
                  + "".join(process.output[-150:]))
        raise


def status_and_cancel_through_either_gateway(client_a: httpx.Client, client_b: httpx.Client,
                                             gateway_b: ServerProcess, db: Database,
                                             workers: set[str]) -> int:
    """A request accepted by gateway A, running on some worker, watched (with its logs) and
    cancelled through gateway B; a waiting one cancelled the same way. How many requests
    that makes."""
    running = submit(client_a, {"n": -1, "seconds": 300, "ticks": 1500})
    stream = StatusStream(gateway_b, running)
    wait_for(lambda: any(m.startswith("drill -1: tick") for m in stream.messages()),
             STEP_TIMEOUT, what="the runner's log lines on the other gateway's stream")
    (runner,) = {runner for (runner,) in db.rows(
        f"SELECT runner_id FROM attempts WHERE request_id = '{running}'")}
    assert runner in workers, "a worker runs it"
    wait_for(lambda: status(client_a, running)["status"] == "IN_PROGRESS", STEP_TIMEOUT,
             what="the gateway that accepted it to see it running")
    cancel = client_b.put(queue_path("drill", running) + "/cancel")
    assert cancel.status_code == 202, cancel.text
    assert cancel.json() == {"status": "CANCELLATION_REQUESTED"}
    final = stream.final(STEP_TIMEOUT)
    assert final["status"] == "COMPLETED" and final["error_type"] == "client_cancelled", final
    for client in (client_a, client_b):
        assert_cancelled(client, "drill", running)

    waiting = submit(client_a, {"seconds": 1}, app="slow")
    assert status(client_b, waiting, "slow")["status"] == "IN_QUEUE"
    cancel = client_b.put(queue_path("slow", waiting) + "/cancel")
    assert cancel.status_code == 202, cancel.text
    for client in (client_a, client_b):
        assert_cancelled(client, "slow", waiting)
    return 2


async def submit_all(gateways: list[ServerProcess]) -> dict[str, int]:
    """Submit the drill's requests over both gateways: request id -> its input's n, for
    every request acknowledged (200 with a request id)."""
    acknowledged: dict[str, int] = {}
    limit = asyncio.Semaphore(SUBMITTERS)
    clients = [httpx.AsyncClient(base_url=g.url, timeout=LOAD_TIMEOUT) for g in gateways]

    async def one(n: int) -> None:
        async with limit:
            response = await clients[n % len(clients)].post(
                queue_path("drill"), json={"n": n, "seconds": WORK_SECONDS})
        if response.status_code == 200:
            acknowledged[response.json()["request_id"]] = n

    try:
        await asyncio.gather(*(one(n) for n in range(REQUESTS)))
    finally:
        for client in clients:
            await client.aclose()
    return acknowledged


def freeze_past_lease(worker: ServerProcess, wid: str, db: Database) -> set[str]:
    """SIGSTOP the worker's process group (its runners, in sessions of their own, go on)
    while it runs something, until an attempt it held has lost its lease: those attempts
    (the worker stays stopped)."""
    for _ in range(5):
        wait_for(lambda: db.held_by(wid), STEP_TIMEOUT, 0.1, "the worker to run something")
        os.killpg(worker.pid, signal.SIGSTOP)
        held = list(db.held_by(wid))
        if held:
            # Each ends: lost (the reaper), or done if its result was on the way already.
            ended = wait_for(lambda held=held: (seen := db.outcomes(held))
                             and all(seen.values()) and seen, STEP_TIMEOUT, 0.1,
                             "the frozen worker's attempts to end")
            lost = {attempt for attempt, outcome in ended.items() if outcome == "lost"}
            if lost:
                return lost
        os.killpg(worker.pid, signal.SIGCONT)  # nothing of it was lost: again
    raise AssertionError("could not freeze the worker past its lease while it ran something")


def check_request(client: httpx.Client, request_id: str, n: int) -> str:
    """The request's one outcome is its own result, and its output file is served: the
    output's file id."""
    seen = status(client, request_id)
    assert seen["status"] == "COMPLETED" and seen.get("error") is None, (
        seen, client.get(f"/api/requests/{request_id}/attempts").json())
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
    return file_id


@pytest.mark.timeout(300)
def test_many_hosts_drill(start_server, start_worker, postgres_server: PostgresServer,
                          postgres_url: str, s3_bucket: str, s3_env: S3Service,
                          tmp_path: Path) -> None:
    db = Database(postgres_server, postgres_url)
    shared = ("--store", postgres_url, "--files", f"s3://{s3_bucket}/files", "--no-runners",
              "--no-builtin", "--app", DRILL, "--app", SLOW, "--lease-seconds", str(LEASE))
    processes: list[ServerProcess] = []
    with outputs_on_failure(processes):
        gateway_a = start_server(*shared, data_dir=tmp_path / "gateway-a")
        gateway_b = start_server(*shared, data_dir=tmp_path / "gateway-b")
        processes += [gateway_a, gateway_b]
        worker_1 = start_worker(gateway_a, "worker-1", DRILL)
        worker_2 = start_worker(gateway_b, "worker-2", DRILL)
        worker_3 = start_worker(gateway_b, "worker-3", DRILL)
        processes += [worker_1, worker_2, worker_3]
        w1, w2, w3 = (worker_id(worker) for worker in (worker_1, worker_2, worker_3))
        with gateway_a.client(timeout=LOAD_TIMEOUT) as client_a, \
                gateway_b.client(timeout=LOAD_TIMEOUT) as client_b:
            cancelled = status_and_cancel_through_either_gateway(client_a, client_b,
                                                                 gateway_b, db, {w1, w2, w3})

            # The load: every request acknowledged (nothing has failed yet).
            acknowledged = asyncio.run(submit_all([gateway_a, gateway_b]))
            assert sorted(acknowledged.values()) == list(range(REQUESTS))

            # Worker 1 dies mid-load holding leases; its runners exit with it.
            wait_for(lambda: db.count("status = 'COMPLETED'") >= REQUESTS // 5
                     and db.held_by(w1), STEP_TIMEOUT, 0.1,
                     "a fifth of the load done, and worker 1 running something")
            worker_1.kill()
            held_by_1 = db.held_by(w1)
            assert held_by_1, "worker 1 held leases when it died"
            wait_for(lambda: not worker_1.tagged_pids(), STEP_TIMEOUT, 0.1,
                     "the killed worker's runners to exit (their socket closed)")
            worker_1.reap_leftovers()
            # Then gateway A: gateway B reaps worker 1's leases, answers for A's requests.
            gateway_a.kill()
            assert db.count("status = 'IN_QUEUE'") > 0, "the load is still on"

            # Worker 3 freezes past its lease: its attempts are lost (gateway B's reaper)
            # and retried; resumed, it finds its late results refused.
            wait_for(lambda: db.count("status = 'COMPLETED'") >= 2 * REQUESTS // 5,
                     STEP_TIMEOUT, 0.2, "two fifths of the load done")
            frozen_lost = freeze_past_lease(worker_3, w3, db)
            assert db.count("status <> 'COMPLETED'") > 0, "the load is still on"
            resumed_at = time.time()
            os.killpg(worker_3.pid, signal.SIGCONT)
            wait_for(lambda: any("refused" in line for line in worker_3.output),
                     STEP_TIMEOUT, 0.1, "the resumed worker's late results to be refused")

            # Every acknowledged request ends, and no other.
            total = len(acknowledged) + cancelled
            wait_for(lambda: db.count("status = 'COMPLETED'") == total, LOAD_TIMEOUT, 0.2,
                     "every acknowledged request to complete")
            assert db.count("true") == total, "no request the callers were not told of"

            # Exactly one committed outcome each, its own, through the surviving gateway.
            with ThreadPoolExecutor(4) as pool:
                file_ids = list(pool.map(lambda item: check_request(client_b, *item),
                                         acknowledged.items()))
            assert db.rows("SELECT request_id FROM attempts WHERE outcome = 'ok'"
                           " GROUP BY request_id HAVING count(*) > 1") == []
            assert db.rows("SELECT r.id FROM requests r JOIN attempts a"
                           " ON a.request_id = r.id AND a.attempt_id = r.attempt_id"
                           " WHERE r.result_status = 200 AND a.outcome <> 'ok'") == []
            assert db.value("SELECT count(*) FROM attempts WHERE outcome IS NULL") == 0, \
                "every attempt ended"
            keys = set(s3_env.keys(s3_bucket, "files/"))
            assert {f"files/{file_id}" for file_id in file_ids} <= keys, "outputs in the bucket"

            # Requests that lost an attempt show it: worker 1's and worker 3's.
            ended_1 = db.outcomes(list(held_by_1))
            assert "lost" in ended_1.values() and set(ended_1.values()) <= {"lost", "ok"}
            lost = dict(db.rows(
                "SELECT request_id, runner_id FROM attempts WHERE outcome = 'lost'"))
            assert {w1, w3} <= set(lost.values())
            assert set(db.outcomes(list(frozen_lost)).values()) == {"lost"}
            for request_id in lost:
                tries = client_b.get(f"/api/requests/{request_id}/attempts").json()["attempts"]
                outcomes = [attempt["outcome"] for attempt in tries]
                assert "lost" in outcomes and outcomes.count("ok") == 1, tries
                assert tries[-1]["outcome"] == "ok" and tries[-1]["runner_id"] in (w2, w3)
            assert db.value(f"SELECT count(*) FROM attempts WHERE runner_id = '{w3}'"
                            f" AND outcome = 'ok' AND started_at > {resumed_at}") > 0, \
                "the resumed worker takes work again"
            done_by = {runner for (runner,) in db.rows(
                "SELECT DISTINCT runner_id FROM attempts WHERE outcome = 'ok'")}
            assert {w2, w3} <= done_by <= {w1, w2, w3}


def test_a_resumed_worker_given_back_its_lost_request_runs_it_once(start_server,
                                                                   start_worker) -> None:
    """A worker frozen past its lease while its runner goes on may, once resumed, claim the
    same request again while the lost attempt still runs: the new attempt waits for the old
    one to end (runners know requests by id) and the request's outcome is its own result,
    not the lost attempt's cancellation."""
    gateway = start_server("--no-runners", "--no-builtin", "--app", DRILL,
                           "--lease-seconds", str(LEASE))
    worker = start_worker(gateway, "worker", DRILL)
    with gateway.client(timeout=STEP_TIMEOUT) as client:
        request_id = submit(client, {"n": 7, "seconds": 6, "ticks": 60})
        wait_for(lambda: status(client, request_id)["status"] == "IN_PROGRESS", STEP_TIMEOUT,
                 what="the worker to start it")
        os.killpg(worker.pid, signal.SIGSTOP)  # the worker only: its runner goes on
        wait_for(lambda: status(client, request_id)["status"] == "IN_QUEUE", STEP_TIMEOUT,
                 what="the lease to lapse")
        os.killpg(worker.pid, signal.SIGCONT)
        wait_for(lambda: status(client, request_id)["status"] == "COMPLETED", STEP_TIMEOUT,
                 what="the request to complete")
        result = client.get(queue_path("drill", request_id))
        assert result.status_code == 200, result.text
        assert result.json()["n"] == 7
        tries = client.get(f"/api/requests/{request_id}/attempts").json()["attempts"]
        assert [attempt["outcome"] for attempt in tries] == ["lost", "ok"]
        wait_for(lambda: any("refused" in line for line in worker.output), STEP_TIMEOUT,
                 what="the lost attempt's result to be refused")
