"""Upstream routing: a *front* openfal forwards catalog endpoints to an *upstream* openfal
that serves stand-ins under the same ids (tests/apps/upstream_apps.py), both real servers
with API keys on. The front reads the upstream's key from an environment variable, as it
would ``FAL_KEY`` for the hosted platform.

What a caller of the front sees is an openfal request in every way: the front's request id,
status with the upstream's logs and progress, its webhooks, its file URLs; and the upstream
sees one request per routed request, also across restarts of either server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from apps.upstream_apps import (
    AURA_FLOW,
    FAST_SDXL,
    FRONT_APPS,
    KLING,
    UPSTREAM_APPS,
    video_bytes,
)
from openfal.app.errors import ModelUnavailable
from openfal.errors import ConfigError
from openfal.runner.process import Runner
from openfal.upstream.config import load_config
from test_cli_config import assert_one_line_error, serve
from test_js_client import JS_DIR, NODE
from test_js_client import pytestmark as JS_CLIENT_INSTALLED
from test_python_client import (
    CURRENT,
    Release,
    exports,  # noqa: F401 (a fixture, used by name)
    release_environment,
)
from test_webhooks import Receiver, request_count, verify

from conftest import ServerProcess, wait_for
from test_run_and_queue import submit, wait_done

APPS = Path(__file__).parent / "apps" / "upstream_apps.py"
KEY_ENV = "OPENFAL_TEST_UPSTREAM_KEY"
UPSTREAM = "test-upstream"
ROUTED = ["fal-ai/kling-video/*", FAST_SDXL, AURA_FLOW]
GIVE_UP_AFTER = 6.0  # seconds; longer than an upstream restart takes
CLIENT_TIMEOUT = 90


# --- servers -------------------------------------------------------------------------------


def app_args(names: tuple[str, ...]) -> list[str]:
    return [arg for name in names for arg in ("--app", f"{APPS}::{name}")]


def write_config(path: Path, upstream: ServerProcess) -> Path:
    path.write_text(f"""
[[upstream]]
name = "{UPSTREAM}"
url = "{upstream.url}"
key_env = "{KEY_ENV}"
endpoints = {json.dumps(ROUTED)}
rehost = true
give_up_after = {GIVE_UP_AFTER}
""")
    return path


def start_upstream(data_dir: Path, port: int = 0) -> ServerProcess:
    return ServerProcess(data_dir, ["--no-builtin", *app_args(UPSTREAM_APPS)], port,
                         name="upstream").start()


def start_front(data_dir: Path, config: Path, *extra: str) -> ServerProcess:
    """A front with the upstream's key in its environment (runners inherit it)."""
    return ServerProcess(data_dir, ["--no-builtin", "--config", str(config),
                                    *app_args(FRONT_APPS), *extra],
                         name="front").start()


def stop(*servers: ServerProcess) -> None:
    for server in servers:
        server.stop()
        server.reap_leftovers()


@contextlib.contextmanager
def upstream_key(upstream: ServerProcess) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, upstream.admin_key)
        yield


def client_of(server: ServerProcess, **kwargs: Any) -> httpx.Client:
    return server.client(headers={"authorization": f"Key {server.admin_key}"}, **kwargs)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_upstream(tmp_path_factory.mktemp("upstream"))
    yield server
    stop(server)


@pytest.fixture(scope="module")
def config(upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("config") / "openfal.toml", upstream)


@pytest.fixture(scope="module")
def front(upstream: ServerProcess, config: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Loopback allowed for the webhook receiver; re-hosting needs no such allowance.
    with upstream_key(upstream):
        server = start_front(tmp_path_factory.mktemp("front"), config,
                             "--allow-network", "127.0.0.0/8")
    yield server
    stop(server)


@pytest.fixture
def caller(front: ServerProcess) -> Iterator[httpx.Client]:
    with client_of(front) as client:
        yield client


@pytest.fixture(scope="module")
def upstream_admin(upstream: ServerProcess) -> Iterator[httpx.Client]:
    with client_of(upstream) as client:
        yield client


# --- helpers -------------------------------------------------------------------------------


def messages(status: dict[str, Any]) -> list[str]:
    return [entry["message"] for entry in status["logs"] or []]


def logs_of(client: httpx.Client, handle: dict[str, Any]) -> list[str]:
    return messages(client.get(handle["status_url"], params={"logs": "1"}).json())


def upstream_request_id(client: httpx.Client, handle: dict[str, Any]) -> str:
    """The upstream's id for a routed request, from the line the front logs at submit."""
    prefix = f"forwarded to upstream {UPSTREAM} as request "

    def logged() -> str | None:
        return next((m[len(prefix):] for m in logs_of(client, handle)
                     if m.startswith(prefix)), None)
    return wait_for(logged, what="the upstream submit")  # type: ignore[return-value]


def wait_logged(client: httpx.Client, handle: dict[str, Any], message: str,
                timeout: float = 30) -> None:
    wait_for(lambda: message in logs_of(client, handle), timeout, what=repr(message))


def upstream_status(upstream: ServerProcess, request_id: str) -> dict[str, Any]:
    with client_of(upstream) as client:
        response = client.get(f"/queue/fal-ai/kling-video/requests/{request_id}/status")
        return response.json()


def upstream_submits(upstream: ServerProcess, tag: str) -> int:
    """How many requests the upstream's store holds whose input carries ``tag``."""
    with contextlib.closing(sqlite3.connect(upstream.data_dir / "openfal.db")) as conn:
        return conn.execute("SELECT COUNT(*) FROM requests WHERE CAST(payload AS TEXT) LIKE ?",
                            (f"%{tag}%",)).fetchone()[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client: httpx.Client, data: bytes, content_type: str, file_name: str) -> str:
    """Store a file in the server's storage as the official clients do; its URL."""
    initiated = client.post("/storage/upload/initiate", params={"storage_type": "fal-cdn-v3"},
                            json={"content_type": content_type, "file_name": file_name})
    assert initiated.status_code == 200, initiated.text
    put = httpx.put(initiated.json()["upload_url"], content=data,
                    headers={"content-type": content_type})
    assert put.status_code == 200, put.text
    return initiated.json()["file_url"]


def assert_rehosted(front: ServerProcess, output: dict[str, Any], prompt: str) -> None:
    """The output's video is a file of the front, with the upstream's bytes."""
    video = output["video"]
    assert video["url"].startswith(f"{front.url}/files/"), video
    assert (video["content_type"], video["file_name"]) == ("video/mp4", "video.mp4")
    download = httpx.get(video["url"])
    assert download.status_code == 200
    assert download.content == video_bytes(prompt)
    assert video["file_size"] == len(download.content)


# --- a routed request, as its caller sees it -----------------------------------------------


def test_routed_request_mirrors_logs_progress_and_files(front: ServerProcess,
                                                        caller: httpx.Client) -> None:
    image = png()
    image_url = upload(caller, image, "image/png", "frame.png")
    handle = submit(caller, KLING, {"prompt": "a cat", "steps": 3, "seconds": 1.5,
                                    "image_url": image_url})

    def with_progress() -> dict[str, Any] | None:
        status = caller.get(handle["status_url"], params={"logs": "1"}).json()
        return status if status.get("progress") else None

    running = wait_for(with_progress, what="the upstream's progress")
    assert running["status"] == "IN_PROGRESS"
    assert running["progress"]["total"] == 3 and running["progress"]["step"] >= 1

    done = wait_done(caller, handle)
    assert "error" not in done
    logs = {entry["message"]: entry["level"] for entry in done["logs"]}
    assert logs["rendering 'a cat'"] == "INFO"
    assert logs["standin: the stand-in renders no real video"] == "WARN"
    assert [m for m in logs if m.startswith("step ")] == ["step 1 of 3", "step 2 of 3",
                                                          "step 3 of 3"]
    # No line of the HTTP client's own logging leaks into the request's logs.
    assert not [m for m in logs if m.startswith("httpx")]

    result = caller.get(handle["response_url"])
    assert result.status_code == 200
    assert result.headers["x-fal-request-id"] == handle["request_id"]
    output = result.json()
    assert output["prompt"] == "a cat"
    # The front's file went to the upstream's storage, and the upstream read it whole.
    assert output["image_sha256"] == sha256(image)
    assert_rehosted(front, output, "a cat")


def test_direct_run_of_a_routed_endpoint(front: ServerProcess, caller: httpx.Client) -> None:
    response = caller.post(f"/{KLING}", json={"prompt": "direct"})
    assert response.status_code == 200, response.text
    assert response.headers["x-fal-request-id"]
    assert_rehosted(front, response.json(), "direct")


def test_upstream_422_comes_back_on_the_same_field(caller: httpx.Client) -> None:
    # Refused at the upstream's submit (its model is stricter), and raised while it ran.
    for body, field, kind in (({"prompt": "x", "duration": "7"}, "duration", "literal_error"),
                              ({"prompt": "bad"}, "prompt", "value_error")):
        direct = caller.post(f"/{KLING}", json=body)
        assert direct.status_code == 422, direct.text
        handle = submit(caller, KLING, body)
        done = wait_done(caller, handle)
        queued = caller.get(handle["response_url"])
        assert queued.status_code == 422
        for detail in (direct.json()["detail"], queued.json()["detail"]):
            assert [(d["loc"], d["type"]) for d in detail] == [(["body", field], kind)]
        assert done["error_type"]


def test_cancel_while_the_upstream_runs(caller: httpx.Client, upstream: ServerProcess) -> None:
    handle = submit(caller, KLING, {"prompt": "long", "steps": 60, "seconds": 30})
    upstream_id = upstream_request_id(caller, handle)
    wait_logged(caller, handle, "step 1 of 60")
    assert caller.put(handle["cancel_url"]).status_code == 202

    done = wait_done(caller, handle)
    assert done["error_type"] == "client_cancelled"
    assert f"cancelled upstream request {upstream_id}" in messages(done)
    assert caller.get(handle["response_url"]).status_code == 499

    def upstream_ended() -> dict[str, Any] | None:
        status = upstream_status(upstream, upstream_id)
        return status if status["status"] == "COMPLETED" else None

    ended = wait_for(upstream_ended, what="the upstream request to end")
    assert ended["error_type"] == "client_cancelled"  # type: ignore[index]


def test_webhook_of_a_routed_request_comes_from_openfal(front: ServerProcess,
                                                       caller: httpx.Client) -> None:
    receiver = Receiver().start()
    try:
        response = caller.post(f"/queue/{KLING}", json={"prompt": "hooked"},
                               params={"fal_webhook": receiver.url})
        request_id = response.json()["request_id"]
        [delivery] = wait_for(lambda: receiver.for_request(request_id),
                              what="the webhook")  # type: ignore[misc]
    finally:
        receiver.stop()
    body = delivery.json
    assert (body["request_id"], body["status"]) == (request_id, "OK")
    assert body["payload"]["prompt"] == "hooked"
    assert body["payload"]["video"]["url"].startswith(f"{front.url}/files/")
    verify(delivery, httpx.get(f"{front.url}/.well-known/jwks.json").json())


def test_routed_only_endpoint_without_an_upstream(front: ServerProcess,
                                                  caller: httpx.Client) -> None:
    """Validated first (422), then refused at once: 503, and no request is created."""
    before = request_count(front.data_dir)
    for path in ("/fal-ai/luma-dream-machine", "/queue/fal-ai/luma-dream-machine"):
        invalid = caller.post(path, json={"prompt": ""})
        assert invalid.status_code == 422
        assert invalid.json()["detail"][0]["loc"] == ["body", "prompt"]
        refused = caller.post(path, json={"prompt": "a dream"})
        assert refused.status_code == 503
        assert refused.headers["x-fal-error-type"] == "upstream_not_configured"
        assert "--config openfal.toml" in refused.json()["detail"]
        assert "[[upstream]]" in refused.json()["detail"]
    assert request_count(front.data_dir) == before


def test_local_app_without_its_model_falls_back_to_the_upstream(caller: httpx.Client) -> None:
    # Weights missing in the request (as the FLUX apps find out), and in setup().
    for endpoint in (FAST_SDXL, AURA_FLOW):
        response = caller.post(f"/{endpoint}", json={"prompt": "fallback"})
        assert response.status_code == 200, response.text
        assert response.json() == {"served_by": "upstream", "prompt": "fallback"}
        handle = submit(caller, endpoint, {"prompt": "queued fallback"})
        assert "error" not in wait_done(caller, handle)
        assert caller.get(handle["response_url"]).json()["served_by"] == "upstream"
    # No upstream serves it: the model's own answer.
    missing = caller.post(f"/{FAST_SDXL}/local-only", json={"prompt": "here"})
    assert missing.status_code == 503
    assert missing.json()["error_type"] == "model_unavailable"


def test_a_runner_without_its_model_holds_no_old_requests() -> None:
    """setup() found the model missing: each request re-raises that error, and it must not
    keep the frames (and inputs) of the requests before."""
    runner = object.__new__(Runner)
    runner.unavailable = ModelUnavailable("The weights are not on this machine.")
    ctx = types.SimpleNamespace(endpoint_id="fal-ai/not-routed", request_id="r")

    def depth() -> int:
        with pytest.raises(ModelUnavailable) as raised:
            asyncio.run(runner.run_endpoint(ctx, None, []))  # type: ignore[arg-type]
        tb, n = raised.value.__traceback__, 0
        while tb is not None:
            tb, n = tb.tb_next, n + 1
        return n

    assert depth() == depth() == depth()


def test_upstream_queue_position_is_mirrored(caller: httpx.Client,
                                             upstream_admin: httpx.Client) -> None:
    """Behind a busy upstream, the front's logs say where the request waits there."""
    caller.post(f"/{FAST_SDXL}", json={"prompt": "warm up"}).raise_for_status()
    blocker = submit(upstream_admin, FAST_SDXL, {"prompt": "hold", "seconds": 3})
    wait_for(lambda: upstream_admin.get(blocker["status_url"]).json()["status"]
             == "IN_PROGRESS", what="the upstream to be busy")
    handle = submit(caller, FAST_SDXL, {"prompt": "behind"})
    done = wait_done(caller, handle)
    assert "error" not in done
    assert "upstream queue position 0" in messages(done)
    wait_done(upstream_admin, blocker)


def test_models_say_where_routed_and_fallback_endpoints_run(caller: httpx.Client) -> None:
    runs_on = {model["endpoint_id"]: model["runs_on"]
               for model in caller.get("/v1/models", params={"limit": 100}).json()["models"]}
    assert runs_on[KLING] == {"kind": "upstream", "upstream": UPSTREAM}
    assert runs_on["fal-ai/luma-dream-machine"] == {"kind": "unavailable",
                                                    "reason": "upstream_not_configured"}
    assert runs_on[FAST_SDXL] == {"kind": "local", "fallback_upstream": UPSTREAM}
    assert runs_on[f"{FAST_SDXL}/local-only"] == {"kind": "local", "fallback_upstream": None}


# --- restarts and an upstream that goes away -----------------------------------------------


def stored_logs(server: ServerProcess, request_id: str) -> list[str]:
    """A request's log lines as the server's store holds them, every attempt's."""
    with contextlib.closing(sqlite3.connect(server.data_dir / "openfal.db")) as conn:
        return [row[0] for row in conn.execute(
            "SELECT message FROM logs WHERE request_id=? ORDER BY rowid", (request_id,))]


def attempts(client: httpx.Client, request_id: str) -> list[dict[str, Any]]:
    return client.get(f"/api/requests/{request_id}/attempts").json()["attempts"]


def by_id(server: ServerProcess, request_id: str) -> dict[str, str]:
    """A queued request's URLs on ``server`` (after a restart on another port)."""
    base = f"{server.url}/queue/fal-ai/kling-video/requests/{request_id}"
    return {"request_id": request_id, "status_url": f"{base}/status", "response_url": base}


def test_front_restart_resumes_without_submitting_again(upstream: ServerProcess,
                                                        config: Path, tmp_path: Path) -> None:
    """kill -9 of the front while the upstream works: the restarted front follows the same
    upstream request to its end; the upstream saw one submit."""
    tag = f"restart-{time.time_ns()}"
    with upstream_key(upstream):
        front = start_front(tmp_path / "front", config)
    try:
        with client_of(front) as client:
            handle = submit(client, KLING, {"prompt": "survivor", "steps": 8, "seconds": 4,
                                            "tag": tag})
            upstream_id = upstream_request_id(client, handle)
            wait_logged(client, handle, "step 1 of 8")
        # Killed once what it mirrored is committed (the saved state is, before it).
        wait_for(lambda: "step 1 of 8" in stored_logs(front, handle["request_id"]),
                 what="the mirrored log line to be stored")
        front.kill()
        assert upstream_status(upstream, upstream_id)["status"] == "IN_PROGRESS"

        with upstream_key(upstream):
            front = start_front(front.data_dir, config)
        with client_of(front) as client:
            handle = by_id(front, handle["request_id"])
            done = wait_done(client, handle, timeout=60)
            assert "error" not in done, done
            assert f"resuming upstream request {upstream_id} at {UPSTREAM} " \
                   "(not submitting it again)" in messages(done)
            # Lines mirrored before the restart are not mirrored twice.
            logs = stored_logs(front, handle["request_id"])
            assert logs.count("rendering 'survivor'") == 1
            assert [m for m in logs if m.startswith("step ")] == [
                f"step {n} of 8" for n in range(1, 9)]
            output = client.get(handle["response_url"]).json()
            assert output["tag"] == tag
            assert_rehosted(front, output, "survivor")
        assert upstream_submits(upstream, tag) == 1
    finally:
        stop(front)


def test_upstream_killed_mid_request(tmp_path: Path) -> None:
    """The upstream killed and restarted while it works: the front follows the request to
    its end. Killed for good: the request ends with a clear error, and what was re-hosted
    before is still served."""
    upstream = start_upstream(tmp_path / "upstream")
    config = write_config(tmp_path / "openfal.toml", upstream)
    with upstream_key(upstream):
        front = start_front(tmp_path / "front", config)  # loopback not allowed to callers
    try:
        with client_of(front) as client:
            kept = client.post(f"/{KLING}", json={"prompt": "kept"})
            assert kept.status_code == 200, kept.text

            tag = f"killed-{time.time_ns()}"
            handle = submit(client, KLING, {"prompt": "restarted", "steps": 4, "seconds": 2,
                                            "tag": tag})
            wait_logged(client, handle, "step 1 of 4")
            upstream.kill()
            # Submitted while the upstream is down: retried on new attempts until it is up.
            later_tag = f"later-{time.time_ns()}"
            later = submit(client, KLING, {"prompt": "while down", "tag": later_tag})
            # Retried on a new attempt at once: nothing listens on the upstream's port any
            # more (its runners, still exiting, never held the listening socket).
            wait_for(lambda: len(attempts(client, later["request_id"])) > 1,
                     what="a retried submit")
            upstream = start_upstream(upstream.data_dir, port=upstream.port)
            done = wait_done(client, handle, timeout=60)
            assert "error" not in done, done
            assert f"upstream {UPSTREAM} is reachable again" in messages(done)
            assert client.get(handle["response_url"]).json()["tag"] == tag
            assert "error" not in wait_done(client, later, timeout=60)
            assert upstream_submits(upstream, tag) == 1
            assert upstream_submits(upstream, later_tag) == 1

            handle = submit(client, KLING, {"prompt": "orphaned", "steps": 30, "seconds": 60})
            wait_logged(client, handle, "step 1 of 30")
            upstream.kill()
            killed_at = time.monotonic()
            done = wait_done(client, handle, timeout=GIVE_UP_AFTER + 30)
            assert time.monotonic() - killed_at < GIVE_UP_AFTER + 15
            assert done["error_type"] == "upstream_unavailable"
            assert f"upstream {UPSTREAM} could not be reached for" in done["error"]
            assert client.get(handle["response_url"]).status_code == 502

            down = client.post(f"/{KLING}", json={"prompt": "while down"})
            assert down.status_code == 502
            assert down.headers["x-fal-error-type"] == "upstream_unavailable"
            assert f"upstream {UPSTREAM}" in down.json()["detail"]

            assert_rehosted(front, kept.json(), "kept")
    finally:
        stop(front, upstream)


def test_a_refused_key_ends_the_request_with_a_clear_error(upstream: ServerProcess,
                                                           config: Path,
                                                           tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, "not-a-key:at-all")
        front = start_front(tmp_path / "front", config)
    try:
        with client_of(front) as client:
            response = client.post(f"/{KLING}", json={"prompt": "no key"})
            assert response.status_code == 502
            assert response.headers["x-fal-error-type"] == "upstream_auth_failed"
            assert f"${KEY_ENV}" in response.json()["detail"]
            handle = submit(client, KLING, {"prompt": "no key"})
            done = wait_done(client, handle)
            assert done["error_type"] == "upstream_auth_failed"
            # Not retried: another attempt would be refused the same way.
            assert len(attempts(client, handle["request_id"])) == 1
    finally:
        stop(front)


# --- the official clients ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(upstream: ServerProcess, config: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A front with --tls, for fal-client (test_python_client's ``exports`` reads it)."""
    with upstream_key(upstream):
        server = start_front(tmp_path_factory.mktemp("tls-front"), config, "--tls")
    yield server
    stop(server)


PYTHON_CLIENT = """
import json, sys
import hashlib
import fal_client, httpx

endpoint = sys.argv[1]
updates = []
def on_update(update):
    updates.append({"type": type(update).__name__,
                    "logs": [e["message"] for e in (getattr(update, "logs", None) or [])]})
subscribed = fal_client.subscribe(endpoint, arguments={"prompt": "subscribed", "steps": 2,
                                  "seconds": 0.4}, with_logs=True, on_queue_update=on_update)
ran = fal_client.run(endpoint, arguments={"prompt": "ran"})
try:
    fal_client.run(endpoint, arguments={"prompt": "bad"})
    refused = None
except fal_client.client.FalClientHTTPError as exc:
    refused = {"status": exc.status_code, "detail": exc.message}
video = httpx.get(subscribed["video"]["url"])
print(json.dumps({"subscribed": subscribed, "ran": ran, "updates": updates,
                  "refused": refused,
                  "video": [video.status_code, hashlib.sha256(video.content).hexdigest()]}))
"""


@pytest.mark.parametrize("release", [CURRENT])
def test_official_python_client_calls_a_routed_endpoint(
        release: Release, tls_server: ServerProcess, request: pytest.FixtureRequest) -> None:
    # test_python_client's fixture: the environment `openfal env` prints for tls_server.
    environment = release_environment(release, request.getfixturevalue("exports"))
    out = run_client([sys.executable, "-c", PYTHON_CLIENT, KLING], env=environment)
    assert out["subscribed"]["prompt"] == "subscribed"
    assert out["subscribed"]["video"]["url"].startswith(f"{tls_server.url}/files/")
    assert out["video"] == [200, sha256(video_bytes("subscribed"))]
    assert out["updates"][-1]["type"] == "Completed"
    assert "step 2 of 2" in [m for u in out["updates"] for m in u["logs"]]
    assert out["ran"]["prompt"] == "ran"
    assert out["refused"]["status"] == 422
    assert [d["loc"] for d in out["refused"]["detail"]] == [["body", "prompt"]]


JS_CLIENT = """
const crypto = require("node:crypto");
const { fal } = require("@fal-ai/client");
const [base, endpoint] = process.argv.slice(1);
fal.config({ proxyUrl: { url: `${base}/api/fal/proxy`, when: "always" } });
(async () => {
  const updates = [];
  const subscribed = await fal.subscribe(endpoint, {
    input: { prompt: "from js", steps: 2, seconds: 0.4 }, logs: true, mode: "streaming",
    onQueueUpdate: (u) =>
      updates.push({ status: u.status, logs: (u.logs || []).map((l) => l.message) }),
  });
  const ran = await fal.run(endpoint, { input: { prompt: "ran by js" } });
  const refused = await fal.run(endpoint, { input: { prompt: "bad" } }).then(
    () => null, (e) => ({ status: e.status, fieldErrors: e.fieldErrors }));
  const video = await (await fetch(subscribed.data.video.url)).arrayBuffer();
  const videoSha256 = crypto.createHash("sha256").update(Buffer.from(video)).digest("hex");
  console.log(JSON.stringify({ subscribed, ran, updates, refused, videoSha256 }));
})().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
"""


@JS_CLIENT_INSTALLED[0]
@JS_CLIENT_INSTALLED[1]
def test_official_js_client_calls_a_routed_endpoint(front: ServerProcess) -> None:
    assert NODE is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    out = run_client([NODE, "-e", JS_CLIENT, front.url, KLING], cwd=JS_DIR,
                     env={**env, "FAL_KEY": front.admin_key})
    subscribed = out["subscribed"]
    assert subscribed["data"]["prompt"] == "from js"
    assert subscribed["requestId"]
    assert subscribed["data"]["video"]["url"].startswith(f"{front.url}/files/")
    assert out["videoSha256"] == sha256(video_bytes("from js"))
    assert out["updates"][-1]["status"] == "COMPLETED"
    assert "step 2 of 2" in [m for u in out["updates"] for m in u["logs"]]
    assert out["ran"]["data"]["prompt"] == "ran by js"
    assert out["refused"]["status"] == 422
    assert [e["loc"] for e in out["refused"]["fieldErrors"]] == [["body", "prompt"]]


def run_client(command: list[str], **kwargs: Any) -> dict[str, Any]:
    """Run an official client's script; the JSON it printed last."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
                              **kwargs)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the client hung for {CLIENT_TIMEOUT} s:\n{exc.stderr}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the config file -----------------------------------------------------------------------


def test_config_entries(tmp_path: Path) -> None:
    """A hosted url names fal's three hosts and its file hosts; one openfal url serves the
    queue under /queue; ``owner/app/*`` takes the app's root and sub-paths, not a longer
    app name; what an entry leaves out keeps its default."""
    config = tmp_path / "openfal.toml"
    config.write_text("[[upstream]]\nurl = 'https://queue.fal.run'\nendpoints = ['a/b/*']\n"
                      "[[upstream]]\nname = 'other'\nurl = 'http://10.0.0.2:8000/'\n"
                      "endpoints = ['c/d']\ntimeout = 5\nrehost = false\n")
    hosted, other = load_config(config).entries
    assert (hosted.name, hosted.run_url, hosted.queue_url, hosted.storage_url) == (
        "upstream-1", "https://fal.run", "https://queue.fal.run", "https://rest.fal.ai")
    assert hosted.holds_file("https://v3.fal.media/files/x.png")
    assert hosted.holds_file("https://rest.fal.ai/x.png")
    assert not hosted.holds_file("https://example.com/x.png")
    assert not hosted.holds_file("http://rest.fal.ai/x.png")  # another origin
    assert [hosted.serves(e) for e in ("a/b", "a/b/c/d", "a/bc", "a/bc/d")] == [
        True, True, False, False]
    assert (hosted.timeout, hosted.give_up_after, hosted.rehost) == (30.0, 60.0, True)
    assert (other.run_url, other.queue_url, other.storage_url) == (
        "http://10.0.0.2:8000", "http://10.0.0.2:8000/queue", "http://10.0.0.2:8000")
    assert other.file_hosts == ()
    assert (other.timeout, other.rehost) == (5.0, False)
    assert [other.serves(e) for e in ("c/d", "c/d/e")] == [True, False]
    for mistake, fragment in (("url = 5", "'url' must be a URL"),
                              ("url = 'http://x'\ntimeout = 'soon'", "could not convert"),
                              ("url = 'ftp://x'", "http(s) URL")):
        config.write_text(f"[[upstream]]\nendpoints = ['a/*']\n{mistake}\n")
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            load_config(config)


@pytest.mark.parametrize(("text", "fragments"), [
    ("[[upstream]]\nurl = 'http://127.0.0.1:1'\n",
     ["{config}", "'endpoints' must be a non-empty list"]),
    ("[[upstream]\n", ["{config}", "is not valid TOML"]),
    ("[[upstream]]\nname = 'hosted'\nurl = 'https://queue.fal.run'\nendpoints = ['x/*']\n"
     f"key_env = '{KEY_ENV}_UNSET'\n", ["upstream hosted", f"${KEY_ENV}_UNSET", "not set"]),
])
def test_a_config_mistake_is_one_line(text: str, fragments: list[str], tmp_path: Path) -> None:
    config = tmp_path / "openfal.toml"
    config.write_text(text)
    done = serve("--config", str(config), data_dir=tmp_path / "data")
    assert_one_line_error(done, *(f.format(config=config) for f in fragments))
