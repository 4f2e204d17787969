"""Partial results: the ``/stream`` SSE route and queued requests' status streams."""

from __future__ import annotations

import json

import httpx
import pytest

from openfal.app import context
from openfal.runner.protocol import Progress, RequestMessage

from test_run_and_queue import submit


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    name = "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: "):])))
            name = "message"
    return events


def test_stream_sends_partials_then_final_result(client: httpx.Client) -> None:
    with client.stream("POST", "/openfal/work/partials/stream",
                       json={"steps": 3, "seconds": 0.3}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-fal-request-id"]
        events = sse_events(response)
    assert [data for _, data in events] == [
        {"step": 1, "of": 3}, {"step": 2, "of": 3}, {"step": 3, "of": 3},
        {"final": True, "steps": 3}]


def test_stream_of_endpoint_without_partials_sends_the_result(client: httpx.Client) -> None:
    with client.stream("POST", "/openfal/echo/stream", json={"prompt": "once"}) as response:
        events = sse_events(response)
    assert events == [("message", {"text": "once"})]


def test_stream_failure_before_any_partial_is_a_plain_http_error(client: httpx.Client) -> None:
    response = client.post("/openfal/work/partials/stream", json={"fail": "error"})
    assert response.status_code == 500
    assert response.json()["error_type"] == "runner_server_error"


def test_stream_failure_after_partials_ends_with_an_error_event(client: httpx.Client) -> None:
    with client.stream("POST", "/openfal/work/partials/stream",
                       json={"steps": 2, "fail": "app"}) as response:
        events = sse_events(response)
    assert [data for _, data in events[:2]] == [{"step": 1, "of": 2}, {"step": 2, "of": 2}]
    name, error = events[-1]
    assert name == "error"
    assert error["status"] == 400
    assert error["detail"] == "failed after partials"


def test_stream_validates_input_and_endpoint(client: httpx.Client) -> None:
    assert client.post("/openfal/echo/stream", json={}).status_code == 422
    assert client.post("/openfal/nothing/stream", json={}).status_code == 404


def test_queued_request_status_stream_carries_partials(client: httpx.Client) -> None:
    handle = submit(client, "openfal/work/partials", {"steps": 4, "seconds": 1.2})
    partials = []
    with client.stream("GET", handle["status_url"] + "/stream") as response:
        for _, status in sse_events(response):
            if "partial" in status:
                partials.append(status["partial"]["step"])
    assert partials, "the status stream should show partial results"
    assert partials == sorted(set(partials))
    assert partials[-1] == 4
    assert client.get(handle["response_url"]).json() == {"final": True, "steps": 4}


def test_progress_reports_are_spaced_and_the_last_step_always_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(context.time, "monotonic", lambda: clock[0])
    sent: list[RequestMessage] = []
    ctx = context.RequestContext("r", "/", {}, sent.append)

    def steps() -> list[tuple[int, int, str | None]]:
        return [(m.step, m.total, m.message) for m in sent if isinstance(m, Progress)]

    for step in range(1, 11):  # ten steps within one interval
        ctx.progress(step, 10)
        clock[0] += context.PROGRESS_INTERVAL_SECONDS / 20
    assert steps() == [(1, 10, None), (10, 10, None)]
    sent.clear()
    ctx.progress(1, 3, "loading")  # a message is always sent
    clock[0] += context.PROGRESS_INTERVAL_SECONDS * 1.5
    ctx.progress(2, 3)  # over an interval later: sent
    assert steps() == [(1, 3, "loading"), (2, 3, None)]
