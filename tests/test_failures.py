"""Crashes, unhealthy runners, timeouts, cancellation and failing setups."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from conftest import wait_for
from test_run_and_queue import submit, wait_done


def runners_of(client: httpx.Client, app_id: str) -> list[dict]:
    return [r for r in client.get("/api/runners").json()["runners"] if r["app_id"] == app_id]


def test_runner_crash_mid_request_is_retried_on_a_new_runner(
        client: httpx.Client, tmp_path: Path) -> None:
    handle = submit(client, "openfal/work", {"fail": "crash", "marker_dir": str(tmp_path)})
    status = wait_done(client, handle)
    assert "error" not in status, status
    result = client.get(handle["response_url"]).json()
    assert result["request_id"] == handle["request_id"]


def test_every_attempt_id_leads_to_its_request(client: httpx.Client, tmp_path: Path) -> None:
    handle = submit(client, "openfal/work", {"fail": "crash", "marker_dir": str(tmp_path)})
    wait_done(client, handle)
    attempts = client.get(f"/api/requests/{handle['request_id']}/attempts").json()["attempts"]
    assert len(attempts) == 2
    for attempt in attempts:
        by_attempt = handle["status_url"].replace(handle["request_id"], attempt["attempt_id"])
        status = client.get(by_attempt)
        assert status.status_code == 200
        assert status.json()["request_id"] == handle["request_id"]


def test_runner_killed_from_outside_mid_request_is_retried(client: httpx.Client) -> None:
    handle = submit(client, "openfal/work", {"seconds": 3, "steps": 30, "message": "victim"})

    def serving_runner() -> dict | None:
        for runner in runners_of(client, "openfal/work"):
            if handle["request_id"] in runner["in_flight"]:
                return runner
        return None

    victim = wait_for(serving_runner, what="the request to reach a runner")
    os.kill(victim["pid"], signal.SIGKILL)
    status = wait_done(client, handle)
    assert "error" not in status, status
    assert client.get(handle["response_url"]).json()["pid"] != victim["pid"]


def test_unhealthy_503_replaces_runner_and_retries(client: httpx.Client, tmp_path: Path) -> None:
    handle = submit(client, "openfal/work", {"fail": "unhealthy", "marker_dir": str(tmp_path)})
    status = wait_done(client, handle)
    assert "error" not in status, status


def test_direct_run_is_not_retried(client: httpx.Client, tmp_path: Path) -> None:
    response = client.post("/openfal/work", json={"fail": "crash", "marker_dir": str(tmp_path)})
    assert response.status_code == 503
    assert response.json()["error_type"] == "runner_disconnected"
    assert response.headers["x-fal-request-id"]


def test_no_retry_header_fails_after_first_crash(client: httpx.Client, tmp_path: Path) -> None:
    handle = submit(client, "openfal/work", {"fail": "crash", "marker_dir": str(tmp_path)},
                    headers={"X-Fal-No-Retry": "1"})
    status = wait_done(client, handle)
    assert status["error_type"] == "runner_disconnected"
    assert client.get(handle["response_url"]).status_code == 503


def test_crash_every_attempt_fails_after_ten_attempts(client: httpx.Client) -> None:
    handle = submit(client, "openfal/work", {"fail": "crash"})
    status = wait_done(client, handle, timeout=120)
    assert status["error_type"] == "runner_disconnected"
    attempts = client.get(f"/api/requests/{handle['request_id']}/attempts").json()["attempts"]
    assert len(attempts) == 10
    assert len({a["attempt_id"] for a in attempts}) == 10


def test_request_timeout_kills_runner_and_fails(client: httpx.Client) -> None:
    # openfal/wait has request_timeout=2; a direct run is not retried.
    response = client.post("/openfal/wait", json={"seconds": 30})
    assert response.status_code == 504
    assert response.json()["error_type"] == "request_timeout"


def test_queued_request_timeout_is_retried_then_fails(client: httpx.Client) -> None:
    handle = submit(client, "openfal/wait", {"seconds": 30},
                    headers={"X-Fal-Request-Timeout": "5"})
    status = wait_done(client, handle, timeout=60)
    # Each attempt times out after 2s; the 5s start deadline stops further retries.
    assert status["error_type"] == "request_timeout"
    attempts = client.get(f"/api/requests/{handle['request_id']}/attempts").json()["attempts"]
    assert 2 <= len(attempts) <= 4


def test_start_deadline_passes_while_queued(client: httpx.Client) -> None:
    # Fill both slots of openfal/wait (max_multiplexing=2, one runner), then a request that
    # must start within 1.5s cannot.
    blockers = [submit(client, "openfal/wait", {"seconds": 1.8}) for _ in range(2)]
    late = submit(client, "openfal/wait", {"seconds": 0}, headers={"X-Fal-Request-Timeout": "1.5"})
    status = wait_done(client, late)
    assert status["error_type"] == "request_timeout"
    result = client.get(late["response_url"])
    assert result.status_code == 504
    assert result.headers["x-fal-request-timeout-type"] == "user"
    for handle in blockers:
        assert "error" not in wait_done(client, handle)


def test_cancel_queued_request_never_runs(client: httpx.Client) -> None:
    blockers = [submit(client, "openfal/wait", {"seconds": 1}) for _ in range(2)]
    queued = submit(client, "openfal/wait", {"seconds": 0})
    assert client.get(queued["status_url"]).json()["status"] == "IN_QUEUE"
    response = client.put(queued["cancel_url"])
    assert response.status_code == 202
    assert response.json() == {"status": "CANCELLATION_REQUESTED"}
    status = wait_done(client, queued)
    assert status["error_type"] == "client_cancelled"
    attempts = client.get(f"/api/requests/{queued['request_id']}/attempts").json()["attempts"]
    assert attempts == []
    assert client.get(queued["response_url"]).status_code == 499
    for handle in blockers:
        wait_done(client, handle)


def test_cancel_running_async_request(client: httpx.Client) -> None:
    handle = submit(client, "openfal/wait", {"seconds": 30})
    wait_for(lambda: client.get(handle["status_url"]).json()["status"] == "IN_PROGRESS")
    assert client.put(handle["cancel_url"]).status_code == 202
    status = wait_done(client, handle, timeout=10)
    assert status["error_type"] == "client_cancelled"


def test_cancel_running_sync_request_cooperatively(client: httpx.Client) -> None:
    handle = submit(client, "openfal/wait/sync", {"seconds": 30, "cooperative": True})
    wait_for(lambda: client.get(handle["status_url"]).json()["status"] == "IN_PROGRESS")
    runner_before = {r["pid"] for r in runners_of(client, "openfal/wait")}
    client.put(handle["cancel_url"])
    status = wait_done(client, handle, timeout=10)
    assert status["error_type"] == "client_cancelled"
    # It stopped by itself: the runner was not replaced.
    assert runner_before <= {r["pid"] for r in runners_of(client, "openfal/wait")}


def test_cancel_running_request_that_ignores_it_is_hard_stopped(client: httpx.Client) -> None:
    handle = submit(client, "openfal/wait/sync", {"seconds": 1.8, "cooperative": False})
    wait_for(lambda: client.get(handle["status_url"]).json()["status"] == "IN_PROGRESS")
    client.put(handle["cancel_url"])
    status = wait_done(client, handle, timeout=10)
    assert status["error_type"] == "client_cancelled"
    assert client.get(handle["response_url"]).status_code == 499


def test_a_hard_stop_retries_the_queued_request_beside_it(client: httpx.Client) -> None:
    # openfal/wait: one runner with two slots. Killing it for the request that ignores its
    # cancel ends the other request on it too: a queued one is retried, and completes.
    stubborn = submit(client, "openfal/wait/sync", {"seconds": 10, "cooperative": False})
    beside = submit(client, "openfal/wait", {"seconds": 1.8})
    for handle in (stubborn, beside):
        wait_for(lambda h=handle: client.get(h["status_url"]).json()["status"] == "IN_PROGRESS")
    client.put(stubborn["cancel_url"])
    assert wait_done(client, stubborn, timeout=10)["error_type"] == "client_cancelled"
    status = wait_done(client, beside, timeout=30)
    assert status.get("error") is None
    assert client.get(beside["response_url"]).json() == {"waited": 1.8}
    attempts = client.get(f"/api/requests/{beside['request_id']}/attempts").json()["attempts"]
    assert [(a["outcome"], a["error_type"]) for a in attempts] == [
        ("failed", "runner_disconnected"), ("ok", None)]


def test_cancel_finished_request_is_already_completed(client: httpx.Client) -> None:
    handle = submit(client, "openfal/echo", {"prompt": "x"})
    wait_done(client, handle)
    response = client.put(handle["cancel_url"])
    assert response.status_code == 400
    assert response.json() == {"status": "ALREADY_COMPLETED"}


def test_failing_setup_fails_waiting_requests_with_reason(client: httpx.Client) -> None:
    handle = submit(client, "openfal/broken", {})
    status = wait_done(client, handle, timeout=60)
    assert status["error_type"] == "runner_scheduling_failure"
    assert "weights are missing" in status["error"]


def test_scale_to_zero_and_back(client: httpx.Client) -> None:
    # openfal/scale: keep_alive=1, max_concurrency=3.
    first = client.post("/openfal/scale", json={}).json()
    wait_for(lambda: not runners_of(client, "openfal/scale"), timeout=15,
             what="scale to zero")
    second = client.post("/openfal/scale", json={}).json()
    assert second["pid"] != first["pid"]


def test_scales_out_up_to_max_concurrency(client: httpx.Client) -> None:
    pids: list[int] = []

    def call() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as own:
            pids.append(own.post("/openfal/scale", json={}).json()["pid"])

    threads = [threading.Thread(target=call) for _ in range(9)]
    for t in threads:
        t.start()
    seen_states: set[str] = set()
    while any(t.is_alive() for t in threads):
        seen_states |= {r["state"] for r in runners_of(client, "openfal/scale")}
        assert len(runners_of(client, "openfal/scale")) <= 3
        time.sleep(0.05)
    assert 2 <= len(set(pids)) <= 3
    assert "running" in seen_states
