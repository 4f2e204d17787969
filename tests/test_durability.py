"""Requests survive a kill -9 of the server; finished ones are kept only as long as asked."""

from __future__ import annotations

import socket
import time
from datetime import datetime

import httpx
import pytest

from conftest import ALL_TEST_APPS, wait_for
from test_run_and_queue import submit, wait_done

WORK_APP = ["--app", ALL_TEST_APPS[0]]


def test_kill_9_of_server_loses_no_request(start_server, tmp_path) -> None:
    server = start_server(*WORK_APP)
    with server.client() as client:
        handles = [submit(client, "openfal/work", {"seconds": 1.5, "steps": 15, "message": str(i)})
                   for i in range(16)]
        wait_for(lambda: sum(client.get(h["status_url"]).json()["status"] == "IN_PROGRESS"
                             for h in handles) >= 2, what="requests to start")
    server.kill()
    # The port is closed at once: runners, still exiting, never hold the server's listening
    # socket (callers would be accepted by nobody, and a restart could not listen there).
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    # Its runners notice the gateway is gone and stop: nothing keeps running the requests.
    wait_for(lambda: not server.tagged_pids(), timeout=10, what="runners to exit")

    restarted = start_server(*WORK_APP, data_dir=server.data_dir, port=server.port)
    with restarted.client() as client:
        for i, handle in enumerate(handles):
            status = wait_done(client, handle, timeout=60)
            assert "error" not in status, status
            result = client.get(handle["response_url"]).json()
            assert result["request_id"] == handle["request_id"]
            assert result["message"] == str(i)
        attempts = [client.get(f"/api/requests/{h['request_id']}/attempts").json()["attempts"]
                    for h in handles]
    retried = [a for a in attempts if len(a) > 1]
    assert retried, "requests that were running should have been retried"
    for request_attempts in retried:
        assert request_attempts[0]["outcome"] == "lost"
        assert request_attempts[-1]["outcome"] == "ok"


def test_accepted_request_survives_immediate_kill(start_server) -> None:
    server = start_server(*WORK_APP)
    with server.client() as client:
        handle = submit(client, "openfal/work", {"seconds": 5})
    server.kill()
    restarted = start_server(*WORK_APP, data_dir=server.data_dir, port=server.port)
    with restarted.client() as client:
        assert "error" not in wait_done(client, handle, timeout=60)


def test_graceful_restart_resumes_queue(start_server) -> None:
    server = start_server(*WORK_APP)
    with server.client() as client:
        handles = [submit(client, "openfal/work", {"seconds": 0.5}) for _ in range(12)]
    server.stop()
    restarted = start_server(*WORK_APP, data_dir=server.data_dir, port=server.port)
    with restarted.client() as client:
        for handle in handles:
            assert "error" not in wait_done(client, handle, timeout=60)


def test_finished_requests_are_removed_after_retention(start_server) -> None:
    server = start_server("--retention-days", str(2 / 86400))
    with server.client() as client:
        handle = submit(client, "openfal/echo", {"prompt": "short-lived"})
        wait_done(client, handle)
        assert client.get(handle["response_url"]).status_code == 200
        wait_for(lambda: client.get(handle["status_url"]).status_code == 404, timeout=15,
                 what="the result to expire")
        assert client.get(handle["response_url"]).status_code == 404


def test_unfinished_requests_are_not_removed_by_retention(start_server) -> None:
    # Retention counts from when a request finishes: one running longer than the retention
    # period still completes and can be read back.
    server = start_server(*WORK_APP, "--retention-days", str(3 / 86400))
    with server.client() as client:
        handle = submit(client, "openfal/work", {"seconds": 5})
        status = wait_done(client, handle, timeout=30)
        assert "error" not in status


def test_queue_position_priority_and_max_length(client: httpx.Client) -> None:
    # openfal/wait: one runner with two slots.
    blockers = [submit(client, "openfal/wait", {"seconds": 1.5}) for _ in range(2)]
    wait_for(lambda: all(client.get(h["status_url"]).json()["status"] == "IN_PROGRESS"
                         for h in blockers), what="blockers to start")
    low = [submit(client, "openfal/wait", {"seconds": 0}, headers={"X-Fal-Queue-Priority": "low"})
           for _ in range(2)]
    normal = [submit(client, "openfal/wait", {"seconds": 0}) for _ in range(2)]
    positions = {h["request_id"]: client.get(h["status_url"]).json()["queue_position"]
                 for h in low + normal}
    assert sorted(positions.values()) == [0, 1, 2, 3]
    assert max(positions[h["request_id"]] for h in normal) < min(
        positions[h["request_id"]] for h in low)

    full = client.post("/queue/openfal/wait?fal_max_queue_length=4", json={"seconds": 0})
    assert full.status_code == 429
    assert full.json()["error_type"] == "queue_full"
    roomy = client.post("/queue/openfal/wait?fal_max_queue_length=5", json={"seconds": 0})
    assert roomy.status_code == 200

    for handle in blockers + low + normal + [roomy.json()]:
        assert "error" not in wait_done(client, handle)

    def started(handle: dict) -> float:
        url = f"/api/requests/{handle['request_id']}/attempts"
        return client.get(url).json()["attempts"][0]["started_at"]

    assert max(map(started, normal)) <= min(map(started, low))


def test_runner_hint_prefers_the_matching_runner(client: httpx.Client) -> None:
    # Bring up both openfal/work runners.
    handles = [submit(client, "openfal/work", {"seconds": 1}) for _ in range(8)]
    for handle in handles:
        wait_done(client, handle)
    pids = [r["pid"] for r in client.get("/api/runners").json()["runners"]
            if r["app_id"] == "openfal/work"]
    assert len(pids) == 2
    for pid in pids:
        for _ in range(3):
            response = client.post("/openfal/work", json={},
                                   headers={"X-Fal-Runner-Hint": f"pid-{pid}"})
            assert response.json()["pid"] == pid


def test_logs_from_before_a_restart_stay_in_the_status(start_server) -> None:
    server = start_server(*WORK_APP)
    with server.client() as client:
        handle = submit(client, "openfal/work", {"seconds": 30, "steps": 300, "message": "x"})

        def logged() -> list[dict]:
            return client.get(handle["status_url"], params={"logs": 1}).json()["logs"] or []

        wait_for(lambda: any(e["message"] == "start x" for e in logged()),
                 what="the first attempt's log line")
    killed_at = time.time()
    server.kill()
    restarted = start_server(*WORK_APP, data_dir=server.data_dir, port=server.port)
    with restarted.client() as client:
        status = client.get(handle["status_url"], params={"logs": 1}).json()
        assert status["status"] in ("IN_QUEUE", "IN_PROGRESS")
        before = [e for e in status["logs"] if e["message"] == "start x"
                  and datetime.fromisoformat(e["timestamp"]).timestamp() < killed_at]
        assert before, status["logs"]
        client.put(handle["cancel_url"])
