"""``min_concurrency`` runners start with the server and are never scaled away."""

from __future__ import annotations

import threading
import time

import httpx

from conftest import APPS, wait_for


def warm_runners(client: httpx.Client) -> list[dict]:
    return [r for r in client.get("/api/runners").json()["runners"]
            if r["app_id"] == "openfal/warm"]


def test_min_concurrency_runner_is_kept_warm(start_server) -> None:
    server = start_server("--app", f"{APPS}::Warm")
    with server.client() as client:
        # Started with the server, before any request.
        first = wait_for(lambda: [r for r in warm_runners(client) if r["state"] == "idle"],
                         what="the warm runner")
        pids: list[int] = []

        def call() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as own:
                pids.append(own.post("/openfal/warm", json={"seconds": 3}).json()["pid"])

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(pids)) == 2  # scaled out to max_concurrency under load
        wait_for(lambda: len(warm_runners(client)) == 1, what="scale back to min_concurrency")
        # Several keep_alive periods later there is still one (never zero).
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert len(warm_runners(client)) == 1
            time.sleep(0.1)
        assert warm_runners(client)[0]["pid"] in {first[0]["pid"], *pids}
