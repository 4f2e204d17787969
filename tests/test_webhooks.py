"""Webhooks: ``fal_webhook`` deliveries, signed and verified by a receiver of our own, that
survive receiver outages and server restarts, with a delivery log, redelivery and key
rotation.

The receiver verifies signatures the way any fal webhook receiver does, from the documented
scheme and the server's JWKS, without openfal's signing code.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from conftest import APPS, ServerProcess, wait_for
from test_run_and_queue import wait_done

APP_ARGS = ["--app", f"{APPS}::Work", "--app", f"{APPS}::BrokenSetup",
            "--allow-network", "127.0.0.0/8"]
FAST_RETRIES = ["--webhook-retry-base-seconds", "0.1"]
MAX_CLOCK_SKEW = 300


# --- the receiver --------------------------------------------------------------------------


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def request_id(self) -> str:
        return self.headers["x-fal-webhook-request-id"]

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers ``self.status``.

    With ``hold`` set it keeps each request waiting until ``release`` is called, like a
    receiver that hangs.
    """

    def __init__(self, status: int = 200, port: int = 0):
        self.status = status
        self.deliveries: list[Delivery] = []
        self.hold = False
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def release(self) -> None:
        self._released.set()

    def for_request(self, request_id: str) -> list[Delivery]:
        return [d for d in list(self.deliveries) if d.request_id == request_id]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.deliveries.append(
                    Delivery({k.lower(): v for k, v in self.headers.items()}, body))
                if receiver.hold:
                    receiver._released.wait(60)
                # The sender may have gone away while we held its request.
                with contextlib.suppress(OSError):
                    self.send_response(receiver.status)
                    self.send_header("content-length", "0")
                    self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify(delivery: Delivery, jwks: dict[str, Any]) -> str:
    """Check a delivery's signature as the fal docs describe; the kid of the key that
    verifies it."""
    headers = delivery.headers
    timestamp = headers["x-fal-webhook-timestamp"]
    assert abs(time.time() - int(timestamp)) <= MAX_CLOCK_SKEW
    message = "\n".join([headers["x-fal-webhook-request-id"], headers["x-fal-webhook-user-id"],
                         timestamp, hashlib.sha256(delivery.body).hexdigest()]).encode()
    signature = bytes.fromhex(headers["x-fal-webhook-signature"])
    for key in jwks["keys"]:
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA",
                                                                     "sig")
        public = Ed25519PublicKey.from_public_bytes(_b64url_decode(key["x"]))
        try:
            public.verify(signature, message)
        except InvalidSignature:
            continue
        return key["kid"]
    raise AssertionError("no key of the JWKS verifies the signature")


# --- helpers -------------------------------------------------------------------------------


def submit(client: httpx.Client, body: dict[str, Any], webhook: str,
           endpoint: str = "openfal/work") -> str:
    response = client.post(f"/queue/{endpoint}", json=body, params={"fal_webhook": webhook})
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def webhook_log(client: httpx.Client, request_id: str) -> dict[str, Any]:
    response = client.get(f"/api/requests/{request_id}/webhooks")
    assert response.status_code == 200, response.text
    return response.json()


def in_state(client: httpx.Client, request_id: str, state: str) -> dict[str, Any] | None:
    log = webhook_log(client, request_id)
    return log if log["state"] == state else None


def delivered(client: httpx.Client, request_id: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(lambda: in_state(client, request_id, "delivered"), timeout,
                    what=f"the webhook of {request_id} to be delivered")  # type: ignore[return-value]


def failed_attempts(log: dict[str, Any], error: str) -> int:
    return sum(error in (a["error"] or "") for a in log["attempts"])


def openfal_cli(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"OPENFAL_KEY": key} if key else {})}
    return subprocess.run([sys.executable, "-m", "openfal", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def request_count(data_dir: Path) -> int:
    with contextlib.closing(sqlite3.connect(data_dir / "openfal.db")) as conn:
        return conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]


# --- one server with auth, for most tests --------------------------------------------------


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with API keys on, that gives up on a webhook after 3 quick attempts."""
    with ServerProcess(tmp_path_factory.mktemp("webhooks"),
                           [*APP_ARGS, *FAST_RETRIES, "--webhook-max-attempts", "3"]) as server:
        yield server


@pytest.fixture
def admin(hooked: ServerProcess) -> Iterator[httpx.Client]:
    with hooked.client(headers={"authorization": f"Key {hooked.admin_key}"}) as client:
        yield client


def test_results_and_errors_are_delivered_signed(hooked: ServerProcess, admin: httpx.Client,
                                                 receiver: Receiver) -> None:
    ok_id = submit(admin, {"message": "hello"}, receiver.url)
    error_id = submit(admin, {"fail": "error"}, receiver.url)
    field_id = submit(admin, {"fail": "field"}, receiver.url)
    wait_for(lambda: {d.request_id for d in receiver.deliveries} >= {ok_id, error_id, field_id},
             what="three deliveries")
    jwks = admin.get("/.well-known/jwks.json").json()
    key_id = hooked.admin_key.split(":")[0]
    for request_id in (ok_id, error_id, field_id):
        [delivery] = receiver.for_request(request_id)
        verify(delivery, jwks)
        assert delivery.headers["x-fal-webhook-user-id"] == key_id
        assert delivery.headers["content-type"] == "application/json"
        result = admin.get(f"/queue/openfal/work/requests/{request_id}")
        attempts = admin.get(f"/api/requests/{request_id}/attempts").json()["attempts"]
        body = delivery.json
        assert body["request_id"] == request_id
        assert body["gateway_request_id"] == attempts[-1]["attempt_id"]
        assert body["payload"] == result.json()
        assert "payload_error" not in body
        if request_id == ok_id:
            assert (body["status"], body["error"]) == ("OK", None)
            assert body["payload"]["message"] == "hello"
        else:
            assert body["status"] == "ERROR"
            assert body["error"] == f"Invalid status code: {result.status_code}"
    assert delivery.json["payload"]["detail"][0]["loc"] == ["body", "message"]  # the 422
    log = delivered(admin, ok_id)
    assert log["url"] == receiver.url
    assert log["next_attempt_at"] is None
    [attempt] = log["attempts"]
    assert attempt["status_code"] == 200 and attempt["error"] is None
    assert attempt["duration"] >= 0 and attempt["finished_at"] >= attempt["started_at"]


def test_jwks_answers_on_the_rest_host_too(hooked: ServerProcess) -> None:
    with hooked.client() as client:
        direct = client.get("/.well-known/jwks.json")
        rest = client.get("/.well-known/jwks.json", headers={"host": "rest.fal.ai"})
    assert direct.status_code == rest.status_code == 200
    assert direct.json() == rest.json() and direct.json()["keys"]


def test_request_that_never_ran_names_itself_as_gateway_request(
        admin: httpx.Client, receiver: Receiver) -> None:
    request_id = submit(admin, {}, receiver.url, endpoint="openfal/broken")
    wait_for(lambda: receiver.for_request(request_id), what="the delivery")
    body = receiver.for_request(request_id)[0].json
    assert body["gateway_request_id"] == request_id
    assert body["status"] == "ERROR"
    assert body["payload"]["error_type"]


@pytest.mark.parametrize("url", [
    "ftp://example.com/hook", "not a url", "http://", "http://exa mple.com/hook",
    "http://127.0.0.1:99999/hook", "http://169.254.169.254/latest/meta-data",
])
def test_a_bad_webhook_url_is_refused_at_submit(hooked: ServerProcess, admin: httpx.Client,
                                                url: str) -> None:
    before = request_count(hooked.data_dir)
    response = admin.post("/queue/openfal/work", json={}, params={"fal_webhook": url})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "fal_webhook"]
    assert request_count(hooked.data_dir) == before


def test_unknown_requests_and_requests_without_webhook_are_404(admin: httpx.Client) -> None:
    assert admin.get("/api/requests/nope/webhooks").status_code == 404
    assert admin.post("/api/requests/nope/webhooks/redeliver").status_code == 404
    plain = admin.post("/queue/openfal/work", json={}).json()
    wait_done(admin, plain)
    response = admin.get(f"/api/requests/{plain['request_id']}/webhooks")
    assert response.status_code == 404
    assert response.json()["error_type"] == "webhook_not_found"


def test_gives_up_after_the_last_attempt_then_redelivers(
        hooked: ServerProcess, admin: httpx.Client, receiver: Receiver) -> None:
    receiver.status = 500
    request_id = submit(admin, {"message": "again"}, receiver.url)
    log = wait_for(lambda: in_state(admin, request_id, "failed"), what="giving up")
    assert [a["error"] for a in log["attempts"]] == ["answered HTTP 500"] * 3  # type: ignore[index]
    assert log["next_attempt_at"] is None  # type: ignore[index]

    receiver.status = 200
    redone = openfal_cli("webhooks", "redeliver", request_id, "--server", hooked.url,
                         key=hooked.admin_key)
    assert redone.returncode == 0, redone.stderr
    log = delivered(admin, request_id)
    assert [a["status_code"] for a in log["attempts"]] == [500, 500, 500, 200]
    assert len(receiver.for_request(request_id)) == 4

    shown = openfal_cli("webhooks", "show", request_id, "--server", hooked.url,
                        key=hooked.admin_key)
    assert shown.returncode == 0, shown.stderr
    assert "delivered" in shown.stdout and "answered HTTP 500" in shown.stdout

    # A delivered webhook can be sent again too: the same body, signed anew.
    assert admin.post(f"/api/requests/{request_id}/webhooks/redeliver").status_code == 202
    wait_for(lambda: len(receiver.for_request(request_id)) == 5, what="the redelivery")
    first, last = receiver.for_request(request_id)[-2:]
    assert first.body == last.body


def test_key_rotation_keeps_old_keys_published_and_signs_with_the_new(
        hooked: ServerProcess, admin: httpx.Client, receiver: Receiver) -> None:
    before = admin.get("/.well-known/jwks.json").json()["keys"]
    rotated = openfal_cli("webhooks", "rotate-key", "--data-dir", str(hooked.data_dir))
    assert rotated.returncode == 0, rotated.stderr
    after = admin.get("/.well-known/jwks.json").json()
    kids = [key["kid"] for key in after["keys"]]
    assert kids[1:] == [key["kid"] for key in before]  # the new key first, the old ones kept
    request_id = submit(admin, {"message": "rotated"}, receiver.url)
    wait_for(lambda: receiver.for_request(request_id), what="the delivery")
    assert verify(receiver.for_request(request_id)[0], after) == kids[0]
    # The keys are the store's now, not files of the data dir.
    assert not (hooked.data_dir / "webhook-keys").exists()
    with hooked.client() as anonymous:
        assert anonymous.post("/api/webhooks/rotate-key").status_code == 401
    assert admin.post("/api/webhooks/rotate-key",
                      json={"retire_after_hours": -1}).status_code == 422


def test_a_data_dir_of_release_0_1_keeps_its_signing_keys(start_server, tmp_path: Path,
                                                         receiver: Receiver) -> None:
    """Release 0.1 kept the keys in <data-dir>/webhook-keys/ (keys.json, <kid>.pem): the
    first start takes them into the store, so receivers pinned to that JWKS still verify."""
    kept, retired = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys_dir = tmp_path / "data" / "webhook-keys"
    keys_dir.mkdir(parents=True)
    manifest = []
    for kid, private, retire_at in (("retired", retired, time.time() - 60),
                                    ("kept", kept, None)):
        (keys_dir / f"{kid}.pem").write_bytes(private.private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        manifest.append({"kid": kid, "created_at": time.time() - 3600, "retire_at": retire_at})
    (keys_dir / "keys.json").write_text(json.dumps({"keys": manifest}))

    server = start_server(*APP_ARGS, data_dir=tmp_path / "data")
    with server.client() as client:
        assert [k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]] == [
            "kept"]
        request_id = submit(client, {"message": "signed"}, receiver.url)
        wait_for(lambda: receiver.for_request(request_id), what="the delivery")
        assert verify(receiver.for_request(request_id)[0],
                      client.get("/.well-known/jwks.json").json()) == "kept"


# --- outages and restarts ------------------------------------------------------------------


def test_no_webhook_is_lost_across_outages_and_a_restart(start_server, tmp_path: Path) -> None:
    receiver = Receiver(status=500).start()
    server = start_server(*APP_ARGS, *FAST_RETRIES, data_dir=tmp_path / "data")
    try:
        with server.client() as client:
            ids = [submit(client, {"message": str(i)}, receiver.url) for i in range(3)]
            wait_for(lambda: all(failed_attempts(webhook_log(client, i), "HTTP 500") >= 2
                                 for i in ids), what="failed attempts while the receiver errs")
        server.stop()
        receiver.stop()  # and now nothing listens there at all

        server = start_server(*APP_ARGS, *FAST_RETRIES, data_dir=server.data_dir,
                              port=server.port)
        with server.client() as client:
            wait_for(lambda: all(failed_attempts(webhook_log(client, i), "ConnectError")
                                 for i in ids), what="failed attempts while nothing listens")
            receiver = Receiver(port=receiver.port).start()
            logs = [delivered(client, i) for i in ids]
            jwks = client.get("/.well-known/jwks.json").json()
    finally:
        receiver.stop()
    for request_id, log in zip(ids, logs, strict=True):
        [delivery] = receiver.for_request(request_id)
        verify(delivery, jwks)
        assert delivery.json["status"] == "OK"
        *failures, success = log["attempts"]
        assert all(a["error"] for a in failures) and success["status_code"] == 200
        assert failed_attempts(log, "HTTP 500") >= 2 and failed_attempts(log, "ConnectError")


def test_an_attempt_cut_short_by_a_crash_is_made_again(start_server, tmp_path: Path,
                                                       receiver: Receiver) -> None:
    receiver.hold = True
    server = start_server(*APP_ARGS, *FAST_RETRIES, data_dir=tmp_path / "data")
    with server.client() as client:
        request_id = submit(client, {}, receiver.url)
        wait_for(lambda: receiver.for_request(request_id), what="the attempt to start")
    server.kill()
    receiver.hold = False
    receiver.release()

    restarted = start_server(*APP_ARGS, *FAST_RETRIES, data_dir=server.data_dir,
                             port=server.port)
    with restarted.client() as client:
        log = delivered(client, request_id)
    interrupted, success = log["attempts"]
    assert interrupted["error"].startswith("interrupted")
    assert success["status_code"] == 200
    # At least once: the receiver saw the cut-short attempt and the one after the restart.
    assert len(receiver.for_request(request_id)) == 2
