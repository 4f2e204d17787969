"""The run and queue APIs in the fal wire format, against a real server process."""

from __future__ import annotations

import json
import threading

import httpx

from conftest import wait_for


def submit(client: httpx.Client, endpoint: str, body: dict, **kwargs) -> dict:
    response = client.post(f"/queue/{endpoint}", json=body, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def wait_done(client: httpx.Client, handle: dict, timeout: float = 30) -> dict:
    def done() -> dict | None:
        response = client.get(handle["status_url"], params={"logs": "1"})
        return response.json() if response.status_code == 200 else None
    return wait_for(done, timeout, what="request to complete")  # type: ignore[return-value]


def test_direct_run_returns_result_and_request_id(client: httpx.Client) -> None:
    response = client.post("/openfal/echo", json={"prompt": "hello"})
    assert response.status_code == 200
    assert response.json() == {"text": "hello"}
    assert response.headers["x-fal-request-id"]


def test_get_run_takes_its_input_from_the_query(client: httpx.Client) -> None:
    response = client.get("/openfal/echo", params={"prompt": "from the query"})
    assert response.json() == {"text": "from the query"}
    assert client.get("/openfal/echo").status_code == 422


def test_sub_path_endpoint_is_its_own_endpoint_id(client: httpx.Client) -> None:
    response = client.post("/openfal/work/edit", json={"message": "cat"})
    assert response.status_code == 200
    assert response.json()["message"] == "edited cat"
    handle = submit(client, "openfal/work/edit", {"message": "dog"})
    # Queue URLs drop the sub-path, as the official clients expect.
    assert f"/queue/openfal/work/requests/{handle['request_id']}" in handle["response_url"]
    wait_done(client, handle)
    assert client.get(handle["response_url"]).json()["message"] == "edited dog"


def test_queue_submit_status_result(client: httpx.Client) -> None:
    handle = submit(client, "openfal/work", {"seconds": 0.3, "steps": 3, "message": "q"})
    assert set(handle) >= {"request_id", "status_url", "response_url", "cancel_url"}
    assert handle["status"] == "IN_QUEUE"
    assert isinstance(handle["queue_position"], int)
    first = client.get(handle["status_url"])
    assert first.status_code in (200, 202)
    final = wait_done(client, handle)
    assert final["status"] == "COMPLETED"
    assert final["metrics"]["inference_time"] > 0.25
    assert "error" not in final
    messages = [entry["message"] for entry in final["logs"]]
    assert "start q" in messages
    assert any("logged through logging" in m for m in messages)
    assert all(set(e) == {"message", "level", "source", "timestamp"} for e in final["logs"])
    result = client.get(handle["response_url"])
    assert result.status_code == 200
    assert result.json()["request_id"] == handle["request_id"]
    assert result.json()["steps"] == 3


def test_status_without_logs_has_null_logs(client: httpx.Client) -> None:
    handle = submit(client, "openfal/echo", {"prompt": "x"})
    wait_done(client, handle)
    for value in ("0", "false"):
        status = client.get(handle["status_url"], params={"logs": value}).json()
        assert status["logs"] is None


def test_in_progress_status_reports_logs_and_progress(client: httpx.Client) -> None:
    handle = submit(client, "openfal/work", {"seconds": 2, "steps": 4, "message": "slow"})

    def running_with_progress() -> dict | None:
        status = client.get(handle["status_url"], params={"logs": "true"}).json()
        if status["status"] == "IN_PROGRESS" and status.get("progress"):
            return status
        return None

    status = wait_for(running_with_progress, what="progress")
    assert status["progress"]["total"] == 4
    assert 1 <= status["progress"]["step"] <= 4
    assert "start slow" in [e["message"] for e in status["logs"]]
    wait_done(client, handle)


def test_status_stream_sends_updates_until_completed(client: httpx.Client) -> None:
    handle = submit(client, "openfal/work", {"seconds": 0.6, "steps": 3, "message": "sse"})
    events = []
    with client.stream("GET", handle["status_url"] + "/stream", params={"logs": 1}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    assert events[-1]["status"] == "COMPLETED"
    assert {"IN_PROGRESS", "COMPLETED"} <= {e["status"] for e in events}
    steps = [e["progress"]["step"] for e in events if e.get("progress")]
    assert steps == sorted(steps) and steps[-1] == 3
    # Each event carries only new log lines, as the JS client accumulates them.
    messages = [entry["message"] for e in events for entry in (e["logs"] or [])]
    assert messages.count("start sse") == 1


def test_failed_request_is_completed_with_error(client: httpx.Client) -> None:
    handle = submit(client, "openfal/work", {"fail": "error"})
    status = wait_done(client, handle)
    assert status["status"] == "COMPLETED"
    assert status["error"] == "Internal Server Error"
    assert status["error_type"] == "runner_server_error"
    assert any("RuntimeError: boom" in e["message"] for e in status["logs"])
    result = client.get(handle["response_url"])
    assert result.status_code == 500
    assert result.json()["error_type"] == "runner_server_error"
    assert result.headers["x-fal-error-type"] == "runner_server_error"


def test_field_exception_becomes_422_for_that_field(client: httpx.Client) -> None:
    direct = client.post("/openfal/work", json={"fail": "field"})
    assert direct.status_code == 422
    assert direct.json()["detail"][0]["loc"] == ["body", "message"]
    handle = submit(client, "openfal/work", {"fail": "field"})
    status = wait_done(client, handle)
    assert status["error_type"] == "validation_error"
    result = client.get(handle["response_url"])
    assert result.status_code == 422
    assert result.json()["detail"][0]["loc"] == ["body", "message"]


def test_app_exception_status_and_detail(client: httpx.Client) -> None:
    response = client.post("/openfal/work", json={"fail": "app"})
    assert response.status_code == 400
    assert response.json()["detail"] == "bad message"


def test_result_before_completion_is_400(client: httpx.Client) -> None:
    handle = submit(client, "openfal/wait", {"seconds": 1})
    response = client.get(handle["response_url"])
    assert response.status_code == 400
    wait_done(client, handle)


def test_request_ids_are_scoped_to_their_app(client: httpx.Client) -> None:
    handle = submit(client, "openfal/echo", {"prompt": "x"})
    wait_done(client, handle)
    other = handle["status_url"].replace("/openfal/echo/", "/openfal/work/")
    assert client.get(other).status_code == 404


def test_multiplexing_runs_requests_concurrently_on_one_runner(client: httpx.Client) -> None:
    # Work: max_multiplexing=4. Four 1s requests on one runner finish together.
    results: list[dict] = []

    def call() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            results.append(own.post("/openfal/work", json={"seconds": 1.0}).json())

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert len({r["request_id"] for r in results}) == 4
    # At most max_concurrency=2 processes served the four, so some shared a runner, and
    # those ran at the same time.
    by_pid: dict[int, list[dict]] = {}
    for r in results:
        by_pid.setdefault(r["pid"], []).append(r)
    assert len(by_pid) <= 2
    shared = max(by_pid.values(), key=len)
    assert len(shared) >= 2
    assert max(r["started_at"] for r in shared) < min(r["finished_at"] for r in shared)
    runners = client.get("/api/runners").json()["runners"]
    work = [r for r in runners if r["app_id"] == "openfal/work"]
    assert 1 <= len(work) <= 2
    assert all(r["state"] in {"idle", "running", "setup", "draining"} for r in work)
