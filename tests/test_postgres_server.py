"""The platform on a real PostgreSQL store: ``openfal serve --store postgresql://...``.

One gateway: the queue, direct runs, streams, cancel, retries, a restart. Two gateways on
one database, each with its own runners: any gateway answers for any request (status,
status stream, result, cancel), keys made on one work on the other, and a webhook is
delivered once. ``openfal db upgrade`` migrates and says so, as often as it is run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from openfal.store.migrations import migrations
from openfal.store.postgres import MIGRATIONS
from test_webhooks import Receiver, verify

from conftest import APPS, ServerProcess, wait_for
from test_run_and_queue import submit

APP_ARGS = ["--app", f"{APPS}::Work", "--app", f"{APPS}::Wait", "--no-builtin"]


def pg_server(start_server: Callable[..., ServerProcess], store: str, data_dir: Path,
              *args: str, auth: bool = False) -> ServerProcess:
    """A gateway on the PostgreSQL store ``store``, running its own runners."""
    return start_server("--store", store, *APP_ARGS, *args, data_dir=data_dir, auth=auth)


def path(url: str) -> str:
    """A URL handed out by one gateway as a path, to ask another gateway."""
    return urlsplit(url).path


def status_of(client: httpx.Client, handle: dict, logs: bool = False) -> dict:
    response = client.get(path(handle["status_url"]), params={"logs": "1" if logs else "0"})
    assert response.status_code in (200, 202), response.text
    return response.json()


def done(client: httpx.Client, handle: dict, timeout: float = 30) -> dict:
    """The final status (with logs) as ``client``'s gateway answers it."""
    def finished() -> dict | None:
        response = client.get(path(handle["status_url"]), params={"logs": "1"})
        return response.json() if response.status_code == 200 else None
    return wait_for(finished, timeout, what="the request to complete")  # type: ignore[return-value]


def in_progress(client: httpx.Client, handle: dict) -> bool:
    return status_of(client, handle)["status"] == "IN_PROGRESS"


def attempts_of(client: httpx.Client, request_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/requests/{request_id}/attempts")
    assert response.status_code == 200, response.text
    return response.json()["attempts"]


def sse_data(response: httpx.Response) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in response.iter_lines()
            if line.startswith("data: ")]


# --- one gateway ---------------------------------------------------------------------------


def test_queue_runs_streams_cancels_and_retries(start_server, postgres_url: str,
                                                tmp_path: Path) -> None:
    server = pg_server(start_server, postgres_url, tmp_path / "data")
    with server.client() as client:
        # Queued: submit, status with logs, result.
        handle = submit(client, "openfal/work", {"seconds": 0.3, "steps": 3, "message": "pg"})
        assert handle["status"] == "IN_QUEUE" and isinstance(handle["queue_position"], int)
        final = done(client, handle)
        assert final["status"] == "COMPLETED" and "error" not in final, final
        assert "start pg" in [entry["message"] for entry in final["logs"]]
        assert final["metrics"]["inference_time"] > 0.25
        result = client.get(handle["response_url"])
        assert result.status_code == 200
        assert result.json()["request_id"] == handle["request_id"]
        assert result.json()["steps"] == 3

        # Direct.
        direct = client.post("/openfal/work", json={"message": "direct"})
        assert direct.status_code == 200, direct.text
        assert direct.json()["message"] == "direct"
        assert direct.json()["request_id"] == direct.headers["x-fal-request-id"]

        # Streamed: the partials, then the result.
        with client.stream("POST", "/openfal/work/partials/stream",
                           json={"steps": 3, "seconds": 0.3}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_data(response)
        assert events == [{"step": 1, "of": 3}, {"step": 2, "of": 3}, {"step": 3, "of": 3},
                          {"final": True, "steps": 3}]

        # Cancel of a running request.
        waiting = submit(client, "openfal/wait", {"seconds": 30})
        wait_for(lambda: in_progress(client, waiting), what="the request to start")
        cancel = client.put(waiting["cancel_url"])
        assert (cancel.status_code, cancel.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
        assert done(client, waiting, timeout=10)["error_type"] == "client_cancelled"
        assert client.get(waiting["response_url"]).status_code == 499
        assert client.put(waiting["cancel_url"]).status_code == 400

        # A crash is retried on a new runner, and both attempts are recorded.
        crash = submit(client, "openfal/work", {"fail": "crash", "marker_dir": str(tmp_path)})
        assert "error" not in done(client, crash), crash
        assert client.get(crash["response_url"]).json()["request_id"] == crash["request_id"]
        attempts = attempts_of(client, crash["request_id"])
        assert [a["attempt"] for a in attempts] == [1, 2]
        assert attempts[0]["outcome"] == "failed"
        assert attempts[0]["error_type"] == "runner_disconnected"
        assert attempts[1]["outcome"] == "ok"
        assert len({a["attempt_id"] for a in attempts}) == 2


def test_queued_request_survives_a_restart(start_server, postgres_url: str,
                                           tmp_path: Path) -> None:
    server = pg_server(start_server, postgres_url, tmp_path / "first")
    with server.client() as client:
        # openfal/wait: one runner of two slots. Fill them, then one more waits.
        blockers = [submit(client, "openfal/wait", {"seconds": 1.5}) for _ in range(2)]
        wait_for(lambda: all(in_progress(client, h) for h in blockers),
                 what="the blockers to start")
        queued = submit(client, "openfal/wait", {"seconds": 0})
        behind = submit(client, "openfal/wait", {"seconds": 0})
        assert status_of(client, queued) == {**status_of(client, queued),
                                             "status": "IN_QUEUE", "queue_position": 0}
        assert status_of(client, behind)["queue_position"] == 1
    server.stop()  # SIGTERM: the running finish, the waiting stay in the store
    assert server.proc is not None and server.proc.returncode == 0

    restarted = pg_server(start_server, postgres_url, tmp_path / "second")
    with restarted.client() as client:
        for handle in (*blockers, queued, behind):
            status = done(client, handle)
            assert "error" not in status, status
        assert client.get(path(queued["response_url"])).json() == {"waited": 0}
        assert [a["outcome"] for a in attempts_of(client, queued["request_id"])] == ["ok"]


# --- two gateways on one database ----------------------------------------------------------


def test_any_gateway_answers_for_any_request(start_server, postgres_url: str,
                                             tmp_path: Path) -> None:
    """A request submitted on A, asked about and cancelled through B. B runs runners of
    its own for openfal/wait only, so openfal/work requests run on A's runners: B learns
    of them from the store and its events alone."""
    first = pg_server(start_server, postgres_url, tmp_path / "a")
    second = start_server("--store", postgres_url, "--app", f"{APPS}::Wait", "--no-builtin",
                          data_dir=tmp_path / "b")
    with first.client() as a, second.client() as b:
        handle = submit(a, "openfal/work", {"seconds": 1.2, "steps": 4, "message": "shared"})
        assert status_of(b, handle)["request_id"] == handle["request_id"]
        # A status stream stays open (keep-alives every 15 s) until the request ends: a
        # read timeout below that says the stream missed the end.
        with b.stream("GET", path(handle["status_url"]) + "/stream", params={"logs": "1"},
                      timeout=10) as stream:
            assert stream.status_code == 200
            events = sse_data(stream)
        assert events[-1]["status"] == "COMPLETED" and "error" not in events[-1]
        assert "IN_PROGRESS" in {e["status"] for e in events}
        steps = [e["progress"]["step"] for e in events if e.get("progress")]
        assert steps and steps == sorted(steps)
        # Each event carries only new log lines: together, the request's logs, once each.
        streamed = [entry["message"] for e in events for entry in (e["logs"] or [])]
        assert streamed.count("start shared") == 1
        finals = [done(client, handle) for client in (a, b)]
        assert [[e["message"] for e in final["logs"]] for final in finals] == [streamed] * 2
        for client in (a, b):
            result = client.get(path(handle["response_url"]))
            assert result.status_code == 200
            assert result.json()["request_id"] == handle["request_id"]
            assert result.json()["steps"] == 4

        # Submitted on A, cancelled through B: one running on A's runner (work), one on
        # whichever gateway's runner claimed it (wait).
        running = []
        for endpoint, body in (("openfal/work", {"seconds": 30, "steps": 300}),
                               ("openfal/wait", {"seconds": 30})):
            handle = submit(a, endpoint, body)
            wait_for(lambda h=handle: in_progress(b, h), what="the request to start")
            cancel = b.put(path(handle["cancel_url"]))
            assert cancel.status_code == 202, cancel.text
            assert cancel.json() == {"status": "CANCELLATION_REQUESTED"}
            running.append(handle)
        for handle in running:
            for client in (a, b):
                assert done(client, handle, timeout=10)["error_type"] == "client_cancelled"
                assert client.get(path(handle["response_url"])).status_code == 499
            assert a.put(path(handle["cancel_url"])).status_code == 400


def test_keys_are_shared_by_the_gateways(start_server, postgres_url: str,
                                         tmp_path: Path) -> None:
    first = pg_server(start_server, postgres_url, tmp_path / "a", auth=True)
    second = pg_server(start_server, postgres_url, tmp_path / "b", auth=True)
    admin = first.admin_key
    # The first gateway made the first ADMIN key; the second found it and made none.
    assert "created the first ADMIN key" in "".join(first.output)
    assert "created the first ADMIN key" not in "".join(second.output)
    assert not (second.data_dir / "admin.key").exists()
    with first.client() as a, second.client() as b:
        listed = b.get("/api/keys", headers={"authorization": f"Key {admin}"})
        assert listed.status_code == 200, listed.text
        assert [k["scope"] for k in listed.json()["keys"]] == ["ADMIN"]

        made = a.post("/api/keys", json={"scope": "API", "name": "shared"},
                      headers={"authorization": f"Key {admin}"})
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        key_id = key.split(":")[0]
        auth = {"authorization": f"Key {key}"}
        # Made on A, used on B at once.
        direct = b.post("/openfal/work", json={"message": "on b"}, headers=auth)
        assert direct.status_code == 200, direct.text
        handle = submit(b, "openfal/work", {"message": "queued on b"}, headers=auth)
        with first.client(headers=auth) as a_as_key:
            assert "error" not in done(a_as_key, handle)
        assert b.post("/openfal/work", json={}).status_code == 401
        wrong = {"authorization": f"Key {key_id}:not-the-secret"}
        assert b.post("/openfal/work", json={}, headers=wrong).status_code == 401
        listed = b.get("/api/keys", headers={"authorization": f"Key {admin}"}).json()["keys"]
        assert [(k["id"], k["name"], k["revoked_at"]) for k in listed][1:] == [
            (key_id, "shared", None)]

        # Revoked on A: refused by both.
        assert a.delete(f"/api/keys/{key_id}",
                        headers={"authorization": f"Key {admin}"}).status_code == 200
        assert a.post("/openfal/work", json={}, headers=auth).status_code == 401
        wait_for(lambda: b.post("/openfal/work", json={}, headers=auth).status_code == 401,
                 timeout=10, what="the revocation to reach the other gateway")
        listed = b.get("/api/keys", headers={"authorization": f"Key {admin}"}).json()["keys"]
        assert listed[1]["revoked_at"] is not None


def test_a_webhook_is_delivered_once_by_two_gateways(start_server, postgres_url: str,
                                                     tmp_path: Path) -> None:
    """Both gateways run delivery workers over the one outbox: each webhook is delivered
    once, by either of them."""
    network = ["--allow-network", "127.0.0.0/8"]
    first = pg_server(start_server, postgres_url, tmp_path / "a", *network)
    second = pg_server(start_server, postgres_url, tmp_path / "b", *network)
    receiver = Receiver().start()
    try:
        with first.client() as a, second.client() as b:
            handles = []
            for client in (a, b) * 3:
                response = client.post("/queue/openfal/work", json={"message": "hook"},
                                       params={"fal_webhook": receiver.url})
                assert response.status_code == 200, response.text
                handles.append(response.json())

            def delivered(request_id: str) -> dict | None:
                log = b.get(f"/api/requests/{request_id}/webhooks").json()
                return log if log["state"] == "delivered" else None

            logs = [wait_for(lambda h=h: delivered(h["request_id"]), what="the delivery")
                    for h in handles]
            results = [[client.get(path(h["response_url"])).json() for client in (a, b)]
                       for h in handles]
            # One set of signing keys, the store's: either gateway's JWKS verifies all.
            jwks = a.get("/.well-known/jwks.json").json()
            assert b.get("/.well-known/jwks.json").json() == jwks

            # Rotated through A: B signs with the new key too, within its reload time.
            rotated = a.post("/api/webhooks/rotate-key")
            assert rotated.status_code == 201, rotated.text
            new_kid = rotated.json()["kid"]
            wait_for(lambda: b.get("/.well-known/jwks.json").json()["keys"][0]["kid"]
                     == new_kid, timeout=15, what="the rotation to reach gateway B")
            after = b.post("/queue/openfal/work", json={"message": "rotated"},
                           params={"fal_webhook": receiver.url}).json()
            wait_for(lambda: delivered(after["request_id"]), what="the delivery after it")
            rotated_jwks = b.get("/.well-known/jwks.json").json()
    finally:
        receiver.stop()
    for handle, log, (on_a, on_b) in zip(handles, logs, results, strict=True):
        assert len(log["attempts"]) == 1, log  # type: ignore[index]
        [delivery] = receiver.for_request(handle["request_id"])
        verify(delivery, jwks)
        assert delivery.json["status"] == "OK"
        assert delivery.json["payload"] == on_a == on_b
        assert on_a["message"] == "hook"
    [signed_after] = receiver.for_request(after["request_id"])
    assert verify(signed_after, rotated_jwks) == new_kid


# --- the schema ----------------------------------------------------------------------------


def test_db_upgrade_migrates_once_and_again(postgres_url: str) -> None:
    """The first run creates the tables, the second finds nothing to do: both say the
    schema is at the newest migration's version."""
    outputs = []
    for _ in range(2):
        upgraded = subprocess.run([sys.executable, "-m", "openfal", "db", "upgrade",
                                   "--store", postgres_url], capture_output=True, text=True,
                                  timeout=60, env={**os.environ, "COLUMNS": "200"})
        assert upgraded.returncode == 0, upgraded.stderr
        outputs.append(upgraded.stdout.strip())
    latest = migrations(MIGRATIONS)[-1][0]
    assert outputs == [f"store schema at version {latest}"] * 2
