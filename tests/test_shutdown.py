"""Stopping a server: SIGTERM/SIGINT drain running work, hand back the rest, and a restart
picks up what was handed back without spending a retry; a second signal stops at once."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from openfal.testing import ServerProcess

from conftest import wait_for

DRILLS = Path(__file__).parent / "apps" / "drills.py"
SLOW = ["--app", f"{DRILLS}::Slow"]


def submit(client: httpx.Client, seconds: float, app: str = "openfal/slow") -> dict:
    """A queued request, with its URLs as paths (they outlive a restart on another port)."""
    response = client.post(f"/queue/{app}", json={"seconds": seconds})
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    base = f"/queue/{app}/requests/{request_id}"
    return {"request_id": request_id, "status_url": f"{base}/status", "response_url": base,
            "cancel_url": f"{base}/cancel"}


def status(client: httpx.Client, handle: dict) -> str:
    return client.get(handle["status_url"]).json()["status"]


def attempts(client: httpx.Client, request_id: str) -> list[dict]:
    return client.get(f"/api/requests/{request_id}/attempts").json()["attempts"]


def log_text(server: ServerProcess) -> str:
    return "".join(server.output)


def signal_server(server: ServerProcess, sig: int) -> None:
    os.killpg(server.pid, sig)


def test_sigterm_lets_running_requests_finish_in_one_attempt(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = start_server(*SLOW, data_dir=tmp_path / "data")
    with server.client() as client:
        handles = [submit(client, 1.5) for _ in range(4)]
        wait_for(lambda: all(status(client, h) == "IN_PROGRESS" for h in handles),
                 what="four requests running")
        signal_server(server, signal.SIGTERM)
        # Draining: no new work, but callers can still follow what is running.
        refused = wait_for(lambda: _refused_submit(client), what="submits refused")
        assert refused.json()["error_type"] == "server_shutting_down"
        assert refused.headers["retry-after"] == "1"
        assert client.get(handles[0]["status_url"]).status_code in (200, 202)
    assert server.wait_exit(30) == 0
    log = log_text(server)
    assert "shutting down: accepting no new requests" in log
    assert "drained: every running request finished" in log
    assert "Traceback" not in log

    restarted = start_server(*SLOW, data_dir=tmp_path / "data")
    with restarted.client() as client:
        for handle in handles:
            assert client.get(handle["status_url"]).json()["status"] == "COMPLETED"
            assert client.get(handle["response_url"]).status_code == 200
            assert [a["outcome"] for a in attempts(client, handle["request_id"])] == ["ok"]


def _refused_submit(client: httpx.Client) -> httpx.Response | None:
    response = client.post("/queue/openfal/slow", json={"seconds": 0})
    return response if response.status_code == 503 else None


def test_past_the_grace_period_running_work_is_handed_back_and_resumes(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    one_at_a_time = ["--app", f"{DRILLS}::SlowOne"]
    server = start_server(*one_at_a_time, "--drain-seconds", "0.5",
                          data_dir=tmp_path / "data")
    with server.client() as client:
        running = submit(client, 3, "openfal/slow-one")
        queued = submit(client, 0.1, "openfal/slow-one")
        wait_for(lambda: status(client, running) == "IN_PROGRESS", what="the request to run")
        signal_server(server, signal.SIGTERM)
    assert server.wait_exit(30) == 0
    assert "handed back 1 running requests" in log_text(server)

    restarted = start_server(*one_at_a_time, data_dir=tmp_path / "data")
    with restarted.client() as client:
        for handle in (running, queued):
            wait_for(lambda h=handle: status(client, h) == "COMPLETED", timeout=60,
                     what="the handed-back and the queued request to finish")
            assert client.get(handle["response_url"]).status_code == 200
        tries = attempts(client, running["request_id"])
        assert [(a["outcome"], a["error_type"]) for a in tries] == [
            ("interrupted", "server_shutdown"), ("ok", None)]
        assert [a["outcome"] for a in attempts(client, queued["request_id"])] == ["ok"]


def test_sigint_answers_a_direct_caller_before_stopping(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(*SLOW)
    answers: list[httpx.Response] = []
    with server.client() as client:
        caller = threading.Thread(target=lambda: answers.append(
            client.post("/openfal/slow", json={"seconds": 1.5})))
        caller.start()
        wait_for(lambda: _running(client), what="the direct request to run")
        signal_server(server, signal.SIGINT)
        # While the running request finishes, new direct runs are refused.
        late = wait_for(lambda: _refused_direct(client), what="direct runs refused")
        caller.join(30)
    assert answers[0].status_code == 200, answers[0].text
    assert late.json()["error_type"] == "server_shutting_down"
    assert late.headers["retry-after"] == "1"
    assert server.wait_exit(30) == 0
    assert "Traceback" not in log_text(server)


def _running(client: httpx.Client) -> bool:
    return any(r["in_flight"] for r in client.get("/api/runners").json()["runners"])


def _refused_direct(client: httpx.Client) -> httpx.Response | None:
    try:
        response = client.post("/openfal/slow", json={"seconds": 0})
    except httpx.TransportError:
        return None  # the listener may close just as the drain ends
    return response if response.status_code == 503 else None


def test_a_second_signal_stops_at_once_and_the_request_runs_again(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = start_server(*SLOW, data_dir=tmp_path / "data")
    with server.client() as client:
        handle = submit(client, 20)
        wait_for(lambda: status(client, handle) == "IN_PROGRESS", what="the request to run")
        signal_server(server, signal.SIGTERM)
        wait_for(lambda: "shutting down" in log_text(server), what="the drain to begin")
        signal_server(server, signal.SIGTERM)
    server.wait_exit(10)  # well before the request's 20 s
    assert "second signal: stopping now" in log_text(server)

    restarted = start_server(*SLOW, data_dir=tmp_path / "data")
    with restarted.client() as client:
        assert status(client, handle) in ("IN_QUEUE", "IN_PROGRESS")
        assert client.put(handle["cancel_url"]).status_code == 202
