"""Hostile and careless clients: abandoned direct calls, floods of waiting calls, slow or
huge headers, too many connections, bodies cut off mid-way, two servers on one data dir."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from openfal.testing import ServerProcess

from conftest import wait_for

DRILLS = Path(__file__).parent / "apps" / "drills.py"
SLOW_ONE = ["--app", f"{DRILLS}::SlowOne"]


def call(server: ServerProcess, path: str, body: dict, hang_up_after: float,
         headers: dict[str, str] | None = None) -> httpx.Response | None:
    """The answer, or None if it did not come before the caller hung up."""
    try:
        return httpx.post(server.url + path, json=body, timeout=hang_up_after,
                          headers=headers)
    except httpx.TimeoutException:
        return None


def requests_with_status(server: ServerProcess, endpoint_id: str, status: int) -> int:
    with sqlite3.connect(server.data_dir / "openfal.db") as conn:
        return conn.execute("SELECT COUNT(*) FROM requests WHERE endpoint_id=? AND"
                            " result_status=?", (endpoint_id, status)).fetchone()[0]


def test_abandoned_direct_calls_are_cancelled(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(*SLOW_ONE)
    callers = [threading.Thread(target=call, args=(server, "/openfal/slow-one",
                                                      {"seconds": 0.5}, 0.2))
               for _ in range(20)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    # One runner serves one request at a time: run to the end, these would take 10 s.
    wait_for(lambda: requests_with_status(server, "openfal/slow-one", 499) == 20,
             timeout=20, what="every abandoned call to end cancelled")
    with server.client() as client:
        assert client.post("/openfal/slow-one", json={"seconds": 0}).status_code == 200


def test_abandoned_streams_are_cancelled(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(*SLOW_ONE)
    for _ in range(3):
        call(server, "/openfal/slow-one/stream", {"seconds": 5}, 0.3)
    wait_for(lambda: requests_with_status(server, "openfal/slow-one", 499) == 3,
             what="every abandoned stream to end cancelled")


def test_direct_calls_waiting_per_key_are_bounded(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(*SLOW_ONE, "--max-waiting-direct", "2", auth=True)
    key = {"authorization": f"Key {server.admin_key}"}
    busy = [threading.Thread(target=call, args=(server, "/openfal/slow-one",
                                                   {"seconds": 3}, 30, key))
            for _ in range(3)]
    busy[0].start()
    with server.client(headers=key) as client:
        wait_for(lambda: any(r["in_flight"] for r in client.get("/api/runners").json()[
            "runners"]), what="the first call to run")
    for caller in busy[1:]:
        caller.start()
    with server.client(headers=key) as client:
        wait_for(lambda: client.get("/api/runners").json()["waiting_direct_by_key"].get(
            server.admin_key.split(":")[0]) == 2, what="two calls waiting")
        response = client.post("/openfal/slow-one", json={"seconds": 0})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error_type"] == "concurrency_limit"
    assert "2 direct requests waiting" in response.json()["detail"]
    for caller in busy:
        caller.join()


@contextmanager
def raw_connection(server: ServerProcess) -> Iterator[socket.socket]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        yield sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_headers_must_arrive_in_time(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--header-timeout", "0.5")
    with raw_connection(server) as silent, raw_connection(server) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")  # and never the rest
        for sock in (silent, slow):
            assert read_all(sock).startswith(b"HTTP/1.1 408 ")
    with raw_connection(server) as prompt:
        prompt.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert read_all(prompt).startswith(b"HTTP/1.1 200 ")


def test_oversized_headers_are_refused(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--max-header-kb", "8")
    with server.client() as client:
        assert client.get("/health", headers={"x-pad": "a" * 4000}).status_code == 200
    with raw_connection(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 1_000_000
                     + b"\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 431 ")


def test_connections_past_the_cap_get_503(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--max-connections", "4")
    with ExitStack() as held:
        for _ in range(4):
            held.enter_context(raw_connection(server))
        with server.client() as client:
            response = wait_for(lambda: _status_503(client), what="a 503 past the cap")
            assert response.status_code == 503
    with server.client() as client:
        assert client.get("/health").status_code == 200


def _status_503(client: httpx.Client) -> httpx.Response | None:
    response = client.get("/health")
    return response if response.status_code == 503 else None


def test_a_body_cut_off_is_logged_as_a_disconnect(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(*SLOW_ONE)
    with raw_connection(server) as sock:
        sock.sendall(b"POST /openfal/slow-one HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"se")
    wait_for(lambda: "disconnected before sending the whole body" in "".join(server.output),
             what="the disconnect in the log")
    log = "".join(server.output)
    assert "Traceback" not in log and "unhandled error" not in log


def test_a_second_server_on_the_same_data_dir_refuses_to_start(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    first = start_server(data_dir=tmp_path / "data")
    second = subprocess.run(
        [sys.executable, "-m", "openfal", "serve", "--port", "0", "--no-auth",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=30)
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert str(tmp_path / "data") in lines[0] and f"pid {first.pid}" in lines[0]
    with first.client() as client:
        assert client.get("/health").status_code == 200
