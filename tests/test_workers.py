"""Workers on other hosts: they claim work with leases, and only the current attempt of a
request may record its outcome (a worker that died, froze or lost its lease cannot)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable

import httpx

from openfal.runner.protocol import Result
from openfal.testing import ServerProcess
from openfal.worker.link import HttpLink

from conftest import APPS, wait_for

WORK = f"{APPS}::Work"
LEASE = "2"  # seconds: short, so lapsed leases are found within a test


def gateway(start_server: Callable[..., ServerProcess], *more: str,
            auth: bool = False) -> ServerProcess:
    """A gateway that runs no runners: workers serve its app."""
    return start_server("--no-runners", "--no-builtin", "--app", WORK, "--lease-seconds", LEASE,
                        *more, auth=auth)


def submit(client: httpx.Client, body: dict, headers: dict[str, str] | None = None) -> str:
    response = client.post("/queue/openfal/work", json=body, headers=headers or {})
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def status(client: httpx.Client, request_id: str) -> dict:
    return client.get(f"/queue/openfal/work/requests/{request_id}/status").json()


def outcome(client: httpx.Client, request_id: str, timeout: float = 60) -> httpx.Response:
    wait_for(lambda: status(client, request_id)["status"] == "COMPLETED", timeout,
             what=f"{request_id} to complete")
    return client.get(f"/queue/openfal/work/requests/{request_id}")


def attempts(client: httpx.Client, request_id: str) -> list[dict]:
    return client.get(f"/api/requests/{request_id}/attempts").json()["attempts"]


def test_queued_direct_and_streamed_requests_run_on_a_remote_worker(start_server,
                                                                     start_worker) -> None:
    server = gateway(start_server)
    worker = start_worker(server, "w1", WORK)
    with server.client() as client:
        request_id = submit(client, {"steps": 2, "message": "remote"})
        with client.stream("GET", f"/queue/openfal/work/requests/{request_id}/status/stream",
                           params={"logs": "1"}) as events:
            lines = [json.loads(line[5:]) for line in events.iter_lines()
                     if line.startswith("data:")]
        assert lines[-1]["status"] == "COMPLETED"
        logged = [entry["message"] for event in lines for entry in event["logs"] or []]
        assert "start remote" in logged, "the runner's output on the worker reaches the stream"
        result = client.get(f"/queue/openfal/work/requests/{request_id}").json()
        assert result["pid"] in worker.tagged_pids(), "it ran in a runner of the worker"

        direct = client.post("/openfal/work", json={"message": "direct"})
        assert direct.status_code == 200 and direct.json()["message"] == "direct"

        with client.stream("POST", "/openfal/work/partials/stream",
                           json={"steps": 3}) as streamed:
            events = [json.loads(line[5:]) for line in streamed.iter_lines()
                      if line.startswith("data:")]
        assert events == [{"step": 1, "of": 3}, {"step": 2, "of": 3}, {"step": 3, "of": 3},
                          {"final": True, "steps": 3}]


def test_a_killed_worker_loses_its_lease_and_another_worker_finishes(start_server,
                                                                     start_worker) -> None:
    server = gateway(start_server)
    first = start_worker(server, "w1", WORK)
    with server.client() as client:
        request_id = submit(client, {"seconds": 3, "steps": 3})
        wait_for(lambda: status(client, request_id)["status"] == "IN_PROGRESS", 60,
                 what="the first worker to start it")
        first.kill()
        second = start_worker(server, "w2", WORK)
        result = outcome(client, request_id)
        assert result.status_code == 200
        assert result.json()["pid"] in second.tagged_pids()
        tries = attempts(client, request_id)
        assert [a["outcome"] for a in tries] == ["lost", "ok"]
        assert tries[0]["runner_id"] != tries[1]["runner_id"], "two workers, two attempts"


def test_a_frozen_workers_late_result_is_refused(start_server, start_worker) -> None:
    server = gateway(start_server)
    frozen = start_worker(server, "w1", WORK)
    with server.client() as client:
        request_id = submit(client, {"seconds": 4, "steps": 4, "message": "once"})
        wait_for(lambda: status(client, request_id)["status"] == "IN_PROGRESS", 60,
                 what="the first worker to start it")
        os.killpg(frozen.pid, signal.SIGSTOP)  # the worker and its runner, past the lease
        wait_for(lambda: status(client, request_id)["status"] == "IN_QUEUE", 30,
                 what="the lease to lapse")
        second = start_worker(server, "w2", WORK)
        result = outcome(client, request_id)
        os.killpg(frozen.pid, signal.SIGCONT)
        wait_for(lambda: any("refused" in line for line in frozen.output), 30,
                 what="the frozen worker's late result to be refused")
        again = client.get(f"/queue/openfal/work/requests/{request_id}")
        assert again.json() == result.json(), "one committed outcome"
        assert result.json()["pid"] in second.tagged_pids()
        assert [a["outcome"] for a in attempts(client, request_id)] == ["lost", "ok"]


def test_only_the_current_attempt_records_an_outcome(start_server) -> None:
    server = gateway(start_server)

    async def scenario() -> None:
        link = HttpLink(server.url, "unused")
        try:
            with server.client() as client:
                request_id = submit(client, {})
            first = (await link.claim("w1", ["openfal/work"], 1, 5)).assignments[0]
            # w1 never renews: after the lease the request waits again, and w2 gets it.
            second = (await link.claim("w2", ["openfal/work"], 1, 30)).assignments[0]
            assert second.request_id == request_id
            assert second.attempt_id != first.attempt_id
            stale = Result(request_id, 200, b'{"by": "w1"}')
            current = Result(request_id, 200, b'{"by": "w2"}')
            assert not await link.finish(first.attempt_id, stale)
            assert await link.finish(second.attempt_id, current)
            assert not await link.finish(second.attempt_id, current), "recorded once"
            renewal = await link.renew("w1", [first.attempt_id], [], 0)
            assert renewal.lost == [first.attempt_id]
        finally:
            await link.close()
        with server.client() as client:
            assert outcome(client, request_id).json() == {"by": "w2"}

    asyncio.run(scenario())


def test_key_limits_hold_across_workers(start_server) -> None:
    server = gateway(start_server, auth=True)
    admin = {"authorization": f"Key {server.admin_key}"}
    with server.client(headers=admin) as client:
        limited = client.post("/api/keys", json={"name": "one at a time",
                                                 "max_concurrency": 1}).json()["key"]
        ids = [submit(client, {}, {"authorization": f"Key {limited}"}) for _ in range(3)]

    async def scenario() -> None:
        link = HttpLink(server.url, server.admin_key)
        try:
            taken = (await link.claim("w1", ["openfal/work"], 4, 0)).assignments
            assert [a.request_id for a in taken] == ids[:1]
            assert (await link.claim("w2", ["openfal/work"], 4, 0)).assignments == []
            assert await link.finish(taken[0].attempt_id, Result(ids[0], 200, b"{}"))
            after = (await link.claim("w2", ["openfal/work"], 4, 0)).assignments
            assert [a.request_id for a in after] == ids[1:2]
        finally:
            await link.close()

    asyncio.run(scenario())


def test_the_worker_api_needs_an_admin_key(start_server) -> None:
    server = gateway(start_server, auth=True)
    with server.client() as client:
        api_key = client.post("/api/keys", json={"name": "api"},
                              headers={"authorization": f"Key {server.admin_key}"}
                              ).json()["key"]
        assert client.post("/api/worker/claim", content=b"").status_code == 401
        assert client.post("/api/worker/claim", content=b"",
                           headers={"authorization": f"Key {api_key}"}).status_code == 403
        garbage = client.post("/api/worker/claim", content=b"\xc1\xff",
                              headers={"authorization": f"Key {server.admin_key}"})
        assert garbage.status_code in (400, 422)
