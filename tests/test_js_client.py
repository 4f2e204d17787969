"""The official JavaScript client, ``@fal-ai/client`` 1.10.1, against a real openfal server.

The client is configured as a user of a self-hosted openfal would: ``proxyUrl`` pointing at
``/api/fal/proxy`` (``when: "always"``, as Node needs) and, for realtime, a ``WebSocket``
class that rewrites the client's hard-coded ``wss://fal.run/`` URL. Each test runs one
scenario of ``tests/js/scenarios.js`` under Node and asserts on the data the client returned.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import APPS, ServerProcess

JS_DIR = Path(__file__).parent / "js"
NODE = shutil.which("node")
CLIENT = JS_DIR / "node_modules" / "@fal-ai" / "client" / "package.json"
SCENARIO_TIMEOUT = 60

# scripts/test installs the client (and stops when Node.js is missing); plain pytest skips.
pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed: install Node.js 20 or newer"),
    pytest.mark.skipif(not CLIENT.exists(), reason="tests/js/node_modules is missing: run the "
                       "tests with scripts/test, which runs `npm ci --prefix tests/js`"),
]


def scenario(server: ServerProcess, name: str, fal_key: str | None = None) -> dict[str, Any]:
    """Run one scenario of scenarios.js against ``server``; its printed JSON result.

    The client takes its credentials from ``FAL_KEY``, as it does by default.
    """
    assert NODE is not None
    env = {key: value for key, value in os.environ.items() if not key.startswith("FAL_")}
    if fal_key is not None:
        env["FAL_KEY"] = fal_key
    try:
        done = subprocess.run([NODE, "scenarios.js", name, server.url], cwd=JS_DIR, env=env,
                              capture_output=True, text=True, timeout=SCENARIO_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"scenario {name} hung for {SCENARIO_TIMEOUT} s:\n{stderr}")
    assert done.returncode == 0, f"scenario {name} failed:\n{done.stderr}"
    # Node exits 0 with nothing printed if the client drops a promise it never settles.
    assert done.stdout.strip(), f"scenario {name} printed no result:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def error_of(outcome: dict[str, Any]) -> dict[str, Any]:
    """The error a settled promise rejected with (fails if it resolved)."""
    assert "error" in outcome, f"expected a rejection, got {outcome}"
    return outcome["error"]


def test_run_returns_data_and_request_id(server: ServerProcess) -> None:
    out = scenario(server, "run")
    assert out["echo"]["data"] == {"text": "hello from js"}
    assert out["echo"]["requestId"]
    work = out["work"]
    assert work["data"]["message"] == "direct"
    assert work["data"]["steps"] == 2
    assert work["requestId"] == work["data"]["request_id"]
    assert out["get"]["data"] == {"text": "via get"}
    assert len({out["echo"]["requestId"], work["requestId"], out["get"]["requestId"]}) == 3


@pytest.mark.parametrize("mode", ["polling", "streaming"])
def test_subscribe_reports_queue_updates_with_logs(server: ServerProcess, mode: str) -> None:
    out = scenario(server, f"subscribe{mode.capitalize()}")
    request_id = out["enqueued"]
    assert out["result"]["requestId"] == request_id
    assert out["result"]["data"]["request_id"] == request_id
    assert out["result"]["data"]["message"] == out["message"]
    assert out["blockersDone"] > 0

    statuses = [update["status"] for update in out["updates"]]
    # Behind a full app the request waits first; statuses never go backwards.
    assert statuses[0] == "IN_QUEUE"
    assert isinstance(out["updates"][0]["queue_position"], int)
    assert "IN_PROGRESS" in statuses
    assert statuses[-1] == "COMPLETED" and statuses.count("COMPLETED") == 1
    order = ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)

    # Streaming mode accumulates logs across events: each line must arrive once.
    final_logs = out["updates"][-1]["logs"]
    assert final_logs.count(f"start {out['message']}") == 1
    assert "testapps: logged through logging" in final_logs


def test_queue_submit_status_stream_status_and_result(server: ServerProcess) -> None:
    out = scenario(server, "queue")
    handle = out["handle"]
    request_id = handle["request_id"]
    assert handle["status"] == "IN_QUEUE"
    assert handle["status_url"].endswith(f"/requests/{request_id}/status")

    assert out["first"]["status"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    streamed = out["streamed"]
    assert streamed[-1]["status"] == "COMPLETED"
    assert out["streamDone"]["status"] == "COMPLETED"
    # The status stream sends each log line once, whenever it was logged.
    streamed_logs = [line for update in streamed for line in update["logs"]]
    assert streamed_logs.count("start queued from js") == 1
    assert out["completed"]["status"] == "COMPLETED"
    assert "start queued from js" in out["completed"]["logs"]

    final = out["final"]
    assert final["status"] == "COMPLETED"
    assert "start queued from js" in final["logs"]
    assert final["metrics"]["inference_time"] > 0
    assert out["result"]["requestId"] == request_id
    assert out["result"]["data"]["message"] == "queued from js"
    assert out["result"]["data"]["steps"] == 3


def test_cancel_queued_and_running_requests(server: ServerProcess) -> None:
    out = scenario(server, "cancel")
    for state in ("queued", "running"):
        cancelled = out[state]
        assert cancelled["cancel"] == {"value": None}, state  # cancel() resolves to undefined
        assert cancelled["final"]["status"] == "COMPLETED", state
        assert cancelled["final"]["error_type"] == "client_cancelled", state
        error = error_of(cancelled["result"])
        assert error["isApiError"] and error["status"] == 499, state
        assert error["body"]["error_type"] == "client_cancelled", state
        assert error["requestId"] == cancelled["requestId"], state
    assert out["queued"]["status"] == "IN_QUEUE"
    assert out["queued"]["queue_position"] >= 0
    assert out["running"]["seen"][-2:] == ["IN_PROGRESS", "COMPLETED"]
    # The requests that filled the app were not disturbed.
    assert out["blockers"] and all(b == {"waited": 1} for b in out["blockers"])


def test_status_stream_closes_after_a_cancelled_request_completes(
        server: ServerProcess) -> None:
    out = scenario(server, "statusStreamAfterCancel")
    assert out["streams"] > 0
    assert out["hung"] == []


def test_stream_events_are_partials_and_done_is_the_result(server: ServerProcess) -> None:
    out = scenario(server, "stream")
    ok = out["ok"]
    assert ok["requestId"]
    assert ok["events"] == [{"step": 1, "of": 3}, {"step": 2, "of": 3}, {"step": 3, "of": 3},
                            {"final": True, "steps": 3}]
    assert ok["done"] == {"final": True, "steps": 3}

    failed = error_of(out["failed"]["done"])
    assert failed["isApiError"] and failed["status"] == 500
    assert out["failed"]["events"] == []

    # A failure after partials is an SSE `event: error`; the client ignores event names,
    # so the error object is the last event and what done() resolves to.
    late = out["late"]
    assert late["events"][:2] == [{"step": 1, "of": 2}, {"step": 2, "of": 2}]
    assert late["events"][-1]["detail"] == "failed after partials"
    assert late["done"]["value"] == late["events"][-1]


def test_storage_upload_round_trips_bytes(server: ServerProcess) -> None:
    out = scenario(server, "storage")
    blob = out["blob"]
    assert blob["url"].startswith(server.url + "/")
    assert blob["download"]["status"] == 200
    assert blob["download"]["size"] == 70_000
    assert blob["download"]["sha256"] == blob["sha256"]
    assert out["blobBytesEqual"]

    named = out["file"]
    assert named["url"].startswith(server.url + "/") and named["url"].endswith("/notes.txt")
    assert named["download"]["contentType"].startswith("text/plain")
    assert named["download"]["text"] == named["text"]

    nested = out["nested"]
    assert nested["input"]["keep"] == "as is"
    assert nested["input"]["deep"]["file"].startswith(server.url + "/")
    assert all(url.startswith(server.url + "/") for url in nested["input"]["list"])
    assert nested["texts"] == {"deep": "nested", "list": ["first", "second"]}


def test_blobs_in_inputs_are_uploaded_and_read_by_the_app(server: ServerProcess) -> None:
    out = scenario(server, "autoUpload")
    sent = out["sent"]
    for result in (out["run"], out["subscribed"]):
        assert result["document"] == {"sha256": sent["documentSha256"],
                                      "size": sent["documentSize"]}
    assert out["run"]["image"] == {"size": [3, 2], "width": 3, "height": 2}
    assert out["echo"]["status"] == 200 and out["echo"]["equal"]
    assert out["echo"]["sha256"] == sent["documentSha256"]
    assert out["flipped"]["status"] == 200
    assert out["flipped"]["contentType"] == "image/png"
    assert out["flipped"]["pngSize"] == [3, 2]


def test_realtime_connect_with_default_tokens_through_the_proxy(server: ServerProcess) -> None:
    out = scenario(server, "realtime")
    assert out["echoes"] == [
        {"n": n, "size": 5, "image": {"bytes": [n * 2, 128, 255, 0, n]}} for n in range(4)]
    assert out["errorsBeforeClose"] == []
    assert out["steps"] == [{"partial": 0}, {"partial": 1}, {"partial": 2}, {"final": 3}]
    # Both sockets carried a token the default provider fetched through the proxy.
    assert len(out["opened"]) == 2
    assert out["opened"][0].startswith("wss://fal.run/openfal/realtime-echo/realtime?")
    assert out["opened"][1].startswith("wss://fal.run/openfal/realtime-echo/steps?")
    assert all("fal_jwt_token=ey" in url for url in out["opened"])


def test_validation_errors_carry_field_errors(server: ServerProcess) -> None:
    out = scenario(server, "validation")
    extra = error_of(out["extra"])
    assert extra["name"] == "ValidationError" and extra["isValidationError"]
    assert extra["status"] == 422
    assert [e["loc"] for e in extra["fieldErrors"]] == [["body", "unknown_field"]]
    assert extra["fieldErrors"][0]["type"] == "extra_forbidden"
    assert out["getFieldErrors"] == extra["fieldErrors"]

    missing = error_of(out["missing"])  # rejected by subscribe's submit
    assert missing["isValidationError"] and missing["status"] == 422
    assert [e["loc"] for e in missing["fieldErrors"]] == [["body", "prompt"]]

    from_app = error_of(out["fromApp"])  # openfal.FieldException raised by the app
    assert from_app["isValidationError"] and from_app["status"] == 422
    assert from_app["fieldErrors"] == [{"loc": ["body", "message"],
                                        "msg": "message is not acceptable",
                                        "type": "value_error"}]


def test_failed_requests_reject_and_cancel_after_completion_is_400(
        server: ServerProcess) -> None:
    out = scenario(server, "failures")
    for name in ("run", "subscribe"):
        error = error_of(out[name])
        assert error["name"] == "ApiError" and not error["isValidationError"], name
        assert error["status"] == 500, name
        assert error["body"]["error_type"] == "runner_server_error", name
        assert error["requestId"], name

    app_error = error_of(out["appError"])
    assert app_error["status"] == 400
    assert app_error["body"]["detail"] == "bad message"

    queued = out["queued"]
    assert queued["status"]["status"] == "COMPLETED"
    assert queued["status"]["error_type"] == "runner_server_error"
    assert "start working" in queued["status"]["logs"]
    result = error_of(queued["result"])
    assert result["status"] == 500 and result["requestId"] == queued["requestId"]

    cancel = error_of(out["cancelCompleted"])
    assert cancel["isApiError"] and cancel["status"] == 400
    assert cancel["body"] == {"status": "ALREADY_COMPLETED"}


def test_credentials_come_from_fal_key(
        start_server: Callable[..., ServerProcess]) -> None:
    keyed = start_server("--app", f"{APPS}::Work", auth=True)
    with_key = scenario(keyed, "credentials", fal_key=keyed.admin_key)
    assert with_key["run"]["value"]["data"] == {"text": "with a key"}
    assert with_key["submit"]["value"]["status"] == "IN_QUEUE"
    assert with_key["upload"]["value"].startswith(keyed.url + "/")

    without = scenario(keyed, "credentials")
    for call in ("run", "submit", "upload"):
        error = error_of(without[call])
        assert error["isApiError"] and error["status"] == 401, call
