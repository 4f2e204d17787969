"""The official Python client, ``fal-client`` from PyPI, unchanged, against a real openfal.

Two releases, each installed in its own folder under ``tests/.clients/`` (``scripts/test`` does it)
and run by ``tests/python_client/driver.py`` in a subprocess whose only configuration is the
environment ``openfal env`` prints for the server:

- **1.0.3** (current) with every variable ``openfal env`` prints: ``FAL_RUN_HOST`` and
  ``FAL_QUEUE_RUN_HOST`` point at the server, the proxy carries ``rest.fal.ai`` and
  ``v3.fal.media``.
- **0.10.0**, the last release without ``FAL_QUEUE_RUN_HOST`` (it always uses
  ``queue.fal.run``), with only ``FAL_KEY``, ``SSL_CERT_FILE`` and ``HTTPS_PROXY``: every
  fal host name goes through the proxy, and its REST host is still ``rest.alpha.fal.ai``.

The server runs with ``--tls`` and auth on; the client's key is the admin key ``openfal env``
hands out. Each test runs one scenario and asserts on what the client returned or raised.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from apps.testapps import Work

from conftest import APPS, ServerProcess

CLIENTS_DIR = Path(__file__).parent / ".clients"
DRIVER = Path(__file__).parent / "python_client" / "driver.py"
SCENARIO_TIMEOUT = 90

# Variables of the environment running the tests that would change where the client goes.
CLIENT_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                    "all_proxy", "WSS_PROXY", "wss_proxy", "NO_PROXY", "no_proxy",
                    "SSL_CERT_FILE", "SSL_CERT_DIR", "PYTHONPATH", "FAL_KEY", "FAL_KEY_ID",
                    "FAL_KEY_SECRET", "FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "OPENFAL_KEY")
# What the 0.x client gets: the proxy alone routes every fal host name (recipe B).
LEGACY_VARIABLES = ("FAL_KEY", "SSL_CERT_FILE", "HTTPS_PROXY")


@dataclass(frozen=True)
class Release:
    version: str
    legacy: bool

    @property
    def path(self) -> Path:
        return CLIENTS_DIR / f"fal-client-{self.version}"


def release_param(version: str, legacy: bool):
    release = Release(version, legacy)
    return pytest.param(release, id=version, marks=pytest.mark.skipif(
        not (release.path / "fal_client").is_dir(),
        reason=f"fal-client {version} is not installed in {release.path}: run the tests "
               "with scripts/test, which installs it"))


CURRENT = release_param("1.0.3", legacy=False)
LEGACY = release_param("0.10.0", legacy=True)
BOTH = pytest.mark.parametrize("release", [CURRENT, LEGACY])
CURRENT_ONLY = pytest.mark.parametrize("release", [CURRENT])

SUBSCRIBE_BLOCKERS = Work.max_concurrency * Work.max_multiplexing  # every slot of openfal/work
MULTIPART_SIZE = 101 * 2**20 + 123  # over the client's 100 MiB multipart threshold


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One ``--tls`` server with auth (and its CONNECT proxy) for the whole module."""
    apps = [arg for name in ("Work", "Wait", "Strict", "Media", "RealtimeEcho")
            for arg in ("--app", f"{APPS}::{name}")]
    server = ServerProcess(tmp_path_factory.mktemp("data"), ["--tls", *apps]).start()
    yield server
    server.stop()
    server.reap_leftovers()


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}


@pytest.fixture(scope="module")
def exports(tls_server: ServerProcess) -> dict[str, str]:
    """What ``openfal env --data-dir`` prints, parsed as a shell would."""
    done = subprocess.run(
        [sys.executable, "-m", "openfal", "env", "--data-dir", str(tls_server.data_dir)],
        env=clean_environment(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    variables = {}
    for line in done.stdout.splitlines():
        keyword, assignment = shlex.split(line)
        assert keyword == "export", line
        name, value = assignment.split("=", 1)
        variables[name] = value
    return variables


def release_environment(release: Release, exports: dict[str, str]) -> dict[str, str]:
    chosen = {k: exports[k] for k in LEGACY_VARIABLES} if release.legacy else exports
    return {**clean_environment(), **chosen, "PYTHONPATH": str(release.path)}


@pytest.fixture
def drive(release: Release, exports: dict[str, str]):
    """Run one driver scenario with ``release``; its JSON result."""
    env = release_environment(release, exports)

    def run(name: str, **args: Any) -> dict[str, Any]:
        try:
            done = subprocess.run([sys.executable, str(DRIVER), name, json.dumps(args)],
                                  env=env, capture_output=True, text=True,
                                  timeout=SCENARIO_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"scenario {name} hung for {SCENARIO_TIMEOUT} s:\n{exc.stderr}")
        assert done.returncode == 0, f"scenario {name} failed:\n{done.stderr}"
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run


def messages(status: dict[str, Any]) -> list[str]:
    return [entry["message"] for entry in status["logs"] or []]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_http_error(error: dict[str, Any], status_code: int, message: Any = None,
                      error_type: str | None = None, release: Release | None = None) -> None:
    """A ``FalClientHTTPError``; ``error_type`` is only read by clients from 0.13.2 on."""
    assert error["class"] == "FalClientHTTPError", error
    assert error["status_code"] == status_code, error
    if message is not None:
        assert error["message"] == message, error
    if error_type is not None and not (release is not None and release.legacy):
        assert error["error_type"] == error_type, error


def assert_already_completed(error: dict[str, Any]) -> None:
    assert_http_error(error, 400)
    assert json.loads(error["message"]) == {"status": "ALREADY_COMPLETED"}


def assert_status_order(updates: list[dict[str, Any]]) -> None:
    """Queued, then in progress, then one final Completed: never backwards."""
    order = ["Queued", "InProgress", "Completed"]
    kinds = [update["type"] for update in updates]
    assert kinds[-1] == "Completed" and kinds.count("Completed") == 1, kinds
    assert [order.index(k) for k in kinds] == sorted(order.index(k) for k in kinds), kinds


# --- configuration -------------------------------------------------------------------------


def test_openfal_env_configures_the_client(tls_server: ServerProcess,
                                           exports: dict[str, str]) -> None:
    port = tls_server.url.rsplit(":", 1)[1]
    assert exports["FAL_KEY"] == tls_server.admin_key
    assert exports["FAL_RUN_HOST"] == f"127.0.0.1:{port}"
    assert exports["FAL_QUEUE_RUN_HOST"] == f"127.0.0.1:{port}/queue"
    assert Path(exports["SSL_CERT_FILE"]).is_file()
    assert exports["HTTPS_PROXY"] == exports["https_proxy"]
    assert exports["HTTPS_PROXY"].startswith("http://127.0.0.1:")


@BOTH
def test_installed_dependencies_satisfy_the_client(release: Release) -> None:
    """The client's declared ranges hold for what it imports (main env or its folder)."""
    [info] = release.path.glob("fal_client-*.dist-info")
    requires = Parser().parsestr((info / "METADATA").read_text()).get_all("Requires-Dist")
    for requirement in map(Requirement, requires):
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra (docs, test, dev)
        version = installed_version(requirement.name, release.path)
        assert requirement.specifier.contains(version, prereleases=True), \
            f"fal-client {release.version} needs {requirement}, found {version}"


def installed_version(name: str, folder: Path) -> str:
    """The version the driver imports: from the client's folder first, else the main env."""
    for dist in metadata.distributions(path=[str(folder)]):
        if canonicalize_name(dist.metadata["Name"]) == canonicalize_name(name):
            return dist.version
    return metadata.version(name)


# --- direct runs and the queue -------------------------------------------------------------


@BOTH
def test_run(release: Release, drive, exports: dict[str, str]) -> None:
    out = drive("run", prompt="hello from python")
    assert out["version"] == release.version
    if release.legacy:  # the fixed fal host names, through the proxy
        assert out["urls"] == {"run": "https://fal.run/", "queue": "https://queue.fal.run/"}
    else:
        assert out["urls"] == {"run": f"https://{exports['FAL_RUN_HOST']}/",
                               "queue": f"https://{exports['FAL_QUEUE_RUN_HOST']}/"}
    assert out["echo"] == {"text": "hello from python"}
    assert out["edit"]["message"] == "edited hello from python"
    assert out["hinted"]["message"] == "hinted" and out["hinted"]["steps"] == 1
    if not release.legacy:
        assert out["get"]["message"] == "working"  # method="GET": no body, the defaults
        assert out["start_timeout"]["message"] == "timed"
        assert out["explicit_key"] == {"text": "explicit"}
    ids = [out[name]["request_id"] for name in ("edit", "hinted", "get") if name in out]
    assert len(set(ids)) == len(ids)


@BOTH
def test_submit_status_get_and_by_id(release: Release, drive, exports: dict[str, str]) -> None:
    message = f"queued by {release.version}"
    out = drive("queue", message=message)
    request_id = out["request_id"]
    queue_base = ("https://queue.fal.run/" if release.legacy
                  else f"https://{exports['FAL_QUEUE_RUN_HOST']}/")
    request_url = f"{queue_base}openfal/work/requests/{request_id}"
    assert out["urls"] == [f"{request_url}/status", request_url, f"{request_url}/cancel"]

    assert out["first"]["type"] in ("Queued", "InProgress", "Completed")
    assert_status_order(out["events"])
    final = out["events"][-1]
    assert messages(final).count(f"start {message}") == 1
    assert "testapps: logged through logging" in messages(final)
    assert final["metrics"]["inference_time"] > 0
    assert out["result"]["request_id"] == request_id
    assert out["result"]["message"] == message and out["result"]["steps"] == 5

    by_id = out["by_id"]
    assert by_id["status"]["type"] == "Completed"
    assert messages(by_id["status"]) == messages(final)
    assert by_id["result"] == out["result"]
    assert_already_completed(by_id["cancel"])


@BOTH
def test_cancel_a_running_request(release: Release, drive) -> None:
    out = drive("cancel")
    assert out["before"]["type"] == "InProgress"
    final = out["final"]
    assert final["type"] == "Completed"
    if not release.legacy:  # Completed.error and error_type exist from 0.13.2 on
        assert final["error"] == "Request cancelled"
        assert final["error_type"] == "client_cancelled"
    for failure in (out["get"], out["result_by_id"]):
        assert_http_error(failure, 499, "Request cancelled", "client_cancelled", release)
    assert_already_completed(out["cancel_again"])


@BOTH
def test_subscribe_reports_queue_updates_and_logs(release: Release, drive) -> None:
    message = f"subscribed by {release.version}"
    out = drive("subscribe", message=message, blockers=SUBSCRIBE_BLOCKERS)
    request_id = out["result"]["request_id"]
    assert out["enqueued"] == [request_id]
    assert out["result"]["message"] == message and out["result"]["steps"] == 3
    assert out["blockers"] == ["blocker"] * SUBSCRIBE_BLOCKERS

    updates = out["updates"]
    assert_status_order(updates)
    # Behind the blockers the request waits first, with a position.
    assert updates[0]["type"] == "Queued"
    assert all(isinstance(u["position"], int) and u["position"] >= 0
               for u in updates if u["type"] == "Queued")
    assert "InProgress" in [u["type"] for u in updates]
    assert messages(updates[-1]).count(f"start {message}") == 1


@CURRENT_ONLY
def test_subscribe_client_timeout_cancels_the_request(drive) -> None:
    out = drive("client_timeout")
    assert out["raised"]["class"] == "FalClientTimeoutError"
    assert out["raised"]["request_id"] == out["request_id"]
    assert out["final"]["type"] == "Completed"
    assert out["final"]["error_type"] == "client_cancelled"


@BOTH
def test_stream_yields_partials_then_the_result(drive) -> None:
    out = drive("stream", steps=3)
    assert out["events"] == [{"step": 1, "of": 3}, {"step": 2, "of": 3}, {"step": 3, "of": 3},
                             {"final": True, "steps": 3}]


@BOTH
def test_errors(release: Release, drive) -> None:
    out = drive("errors")
    for name, field in (("run_422", "bogus"), ("submit_422", "extra")):
        assert_http_error(out[name], 422)
        detail = out[name]["message"]  # the pydantic detail list, as the server sent it
        assert isinstance(detail, list)
        assert [e["type"] for e in detail if e["loc"] == ["body", field]] == ["extra_forbidden"]

    assert_http_error(out["run_500"], 500, error_type="runner_server_error", release=release)
    assert out["failed_status"]["type"] == "Completed"
    if not release.legacy:
        assert out["failed_status"]["error_type"] == "runner_server_error"
        assert out["failed_status"]["error"]
    for failure in (out["failed_get"], out["failed_result_by_id"]):
        assert_http_error(failure, 500, out["failed_status"].get("error"),
                          "runner_server_error", release)
    assert_already_completed(out["cancel_completed"])
    assert_http_error(out["unknown_id"], 404, "Request not found", "request_not_found", release)
    assert_http_error(out["wrong_key"], 401, error_type="unauthorized", release=release)


# --- files ---------------------------------------------------------------------------------


@BOTH
def test_upload_bytes_file_and_image(release: Release, drive) -> None:
    text = f"uploaded by fal-client {release.version}"
    out = drive("upload", text=text)
    expected = sha256(text.encode())

    uploaded = out["bytes"]
    assert uploaded["url"].endswith("/hello.txt")
    assert uploaded["content"] == text
    assert uploaded["download"] == {"status": 200, "content_type": "text/plain",
                                    "sha256": expected, "size": len(text.encode())}

    from_file = out["file"]
    assert from_file["url"].endswith("/notes.csv")
    assert from_file["content"] == f"{text},file"
    assert from_file["download"]["content_type"] == "text/csv"

    image = out["image"]
    assert image["download"]["status"] == 200
    assert image["download"]["content_type"] == "image/png"
    assert image["download"]["sha256"] == image["sha256"]
    assert image["image"] == {"size": [8, 4], "corners": [[0, 0, 255], [255, 0, 0]]}

    # The uploaded URLs work as inputs of an app.
    media = out["media"]
    assert media["document"] == {"sha256": expected, "size": len(text.encode())}
    assert media["image"] == {"size": [8, 4], "width": 8, "height": 4}
    assert media["flipped"]["corners"] == [[255, 0, 0], [0, 0, 255]]

    if not release.legacy:  # repository="fal": storage initiate + signed PUT
        assert out["storage"]["content"] == text
        assert out["storage"]["download"]["sha256"] == expected


@CURRENT_ONLY
def test_multipart_upload_over_100_mib(drive) -> None:
    out = drive("multipart", seed=7, size=MULTIPART_SIZE)
    assert out["multipart"], "the client did not take its multipart path"
    assert out["url"].endswith("/big.bin")
    assert out["download"] == {"status": 200, "content_type": "application/octet-stream",
                               "sha256": out["sent_sha256"], "size": MULTIPART_SIZE}


@CURRENT_ONLY
def test_encoded_data_uris_are_accepted_as_inputs(drive) -> None:
    text = "encoded, never uploaded"
    out = drive("encode", text=text)
    assert out["uris"] == ["data:text/plain;base64", "data:image/png;base64"]
    document = {"sha256": sha256(text.encode()), "size": len(text)}
    assert out["from_bytes"] == document
    assert out["from_file"] == document
    assert out["image"] == {"size": [8, 4], "width": 8, "height": 4}


# --- realtime ------------------------------------------------------------------------------

INTACT = {"size": 1025, "is_bytes": True, "reversed": True}


@pytest.mark.parametrize(("release", "use_jwt"), [
    pytest.param(*CURRENT.values, True, id="1.0.3-jwt", marks=CURRENT.marks),
    pytest.param(*CURRENT.values, False, id="1.0.3-key", marks=CURRENT.marks),
    pytest.param(*LEGACY.values, True, id="0.10.0-jwt", marks=LEGACY.marks),
])
def test_realtime_round_trips_bytes(drive, use_jwt: bool) -> None:
    out = drive("realtime", use_jwt=use_jwt)
    assert out["answers"] == [{"n": 1, **INTACT}, {"n": 2, **INTACT}]


@BOTH
def test_ws_connect_raw_socket(drive) -> None:
    assert drive("ws_connect")["answer"] == {"n": 7, **INTACT}


# --- the async client ----------------------------------------------------------------------


@BOTH
def test_async_queue_subscribe_stream_and_cancel(release: Release, drive) -> None:
    message = f"async {release.version}"
    out = drive("async_queue", message=message)
    assert out["run"] == {"text": message}
    assert_status_order(out["events"])
    assert f"start {message}" in messages(out["events"][-1])
    assert out["result"]["request_id"] == out["request_id"]
    assert out["result"]["message"] == message
    assert out["status"]["type"] == "Completed"
    assert out["by_id"]["status"]["type"] == "Completed"
    assert out["by_id"]["result"] == out["result"]
    assert_already_completed(out["by_id"]["cancel"])

    assert out["subscribed"]["message"] == f"{message} again"
    assert_status_order(out["updates"])
    assert f"start {message} again" in messages(out["updates"][-1])
    assert out["stream"] == [{"step": 1, "of": 2}, {"step": 2, "of": 2},
                             {"final": True, "steps": 2}]

    assert out["cancelled"]["type"] == "Completed"
    assert_http_error(out["cancelled_get"], 499, "Request cancelled", "client_cancelled",
                      release)
    assert_http_error(out["run_422"], 422)
    assert {tuple(e["loc"]) for e in out["run_422"]["message"]} == {("body", "bogus"),
                                                                    ("body", "prompt")}


@BOTH
def test_async_uploads(release: Release, drive) -> None:
    text = f"async upload by {release.version}"
    out = drive("async_upload", text=text)
    expected = {"status": 200, "content_type": "text/plain", "sha256": sha256(text.encode()),
                "size": len(text.encode())}
    assert out["bytes"] == {"download": expected, "content": text}
    assert out["file"] == {"download": expected, "content": text}
    assert out["image"]["download"]["content_type"] == "image/png"
    assert out["image"]["download"]["sha256"] == out["image"]["sha256"]
    assert out["image"]["image"] == {"size": [8, 4], "corners": [[0, 0, 255], [255, 0, 0]]}


@BOTH
def test_async_realtime(release: Release, drive) -> None:
    modes = ["jwt"] if release.legacy else ["jwt", "key"]  # use_jwt=False from 0.13.0 on
    out = drive("async_realtime", modes=modes)
    assert out == {**{mode: {"n": 3, **INTACT} for mode in modes}, "raw": {"n": 4, **INTACT}}
