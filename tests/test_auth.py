"""API keys, scopes, ownership, public apps, per-key concurrency and the usage ledger."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from openfal.gateway.app import ACCESS
from openfal.gateway.auth import Access

from conftest import APPS, ServerProcess, wait_for

APP_ARGS = [arg for name in ("Work", "Wait", "PublicEcho", "RealtimeEcho")
            for arg in ("--app", f"{APPS}::{name}")]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("auth"), APP_ARGS) as server:
        yield server


@pytest.fixture(scope="module")
def keys(secured: ServerProcess) -> dict[str, str]:
    admin = secured.admin_key
    made = {"admin": admin}
    with httpx.Client(base_url=secured.url, headers=auth(admin)) as client:
        for name, body in {"alice": {"scope": "API"}, "bob": {"scope": "API"},
                           "limited": {"scope": "API", "max_concurrency": 2},
                           "revoked": {"scope": "API"}}.items():
            response = client.post("/api/keys", json={**body, "name": name})
            assert response.status_code == 201, response.text
            made[name] = response.json()["key"]
        revoked_id = made["revoked"].split(":")[0]
        assert client.delete(f"/api/keys/{revoked_id}").status_code == 200
    return made


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Key {key}"}


def count(server: ServerProcess, table: str) -> int:
    with sqlite3.connect(server.data_dir / "openfal.db") as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_first_start_creates_one_admin_key(secured: ServerProcess, start_server) -> None:
    key_file = secured.data_dir / "admin.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    wait_for(lambda: secured.admin_key in "".join(secured.output), what="the key printed")
    with httpx.Client(base_url=secured.url) as client:
        listed = client.get("/api/keys", headers=auth(secured.admin_key)).json()["keys"]
    stored = (secured.data_dir / "openfal.db").read_bytes()
    secret = secured.admin_key.split(":")[1]
    assert secret.encode() not in stored, "secrets are stored only as hashes"
    assert all("secret_hash" not in key for key in listed)


def test_no_second_admin_key_on_restart(start_server, tmp_path) -> None:
    first = start_server(data_dir=tmp_path / "d", auth=True)
    key = first.admin_key
    first.stop()
    again = start_server(data_dir=tmp_path / "d", auth=True)
    assert again.admin_key == key
    assert "created the first ADMIN key" not in "".join(again.output)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: "1" if m.group(0).endswith(":int}") else
                  "openfal" if "owner" in m.group(0) else "x", path)


@pytest.mark.parametrize(("path", "method"), sorted(ACCESS))
def test_every_route_is_guarded_as_declared(secured: ServerProcess, keys: dict[str, str],
                                            path: str, method: str) -> None:
    access = ACCESS[(path, method)]
    url = concrete(path)
    with httpx.Client(base_url=secured.url) as client:
        anonymous = client.request(method, url)
        forged = client.request(method, url, headers=auth(keys["alice"].split(":")[0] + ":no"))
        revoked = client.request(method, url, headers=auth(keys["revoked"]))
        as_api = client.request(method, url, headers=auth(keys["alice"]))
    assert anonymous.status_code < 500 and as_api.status_code < 500
    if access in (Access.KEY, Access.ADMIN):
        assert anonymous.status_code == 401
        assert anonymous.json()["error_type"] == "unauthorized"
    if access is not Access.PUBLIC:
        assert forged.status_code == 401
        assert revoked.status_code == 401
    if access is Access.ADMIN:
        assert as_api.status_code == 403


def test_requests_are_private_to_their_key(secured: ServerProcess, keys: dict[str, str]) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as client:
        handle = client.post("/queue/openfal/work", json={}, headers=auth(keys["alice"])).json()
        rid = handle["request_id"]
        wait_for(lambda: client.get(handle["status_url"],
                                    headers=auth(keys["alice"])).status_code == 200)
        for url in (handle["status_url"], handle["response_url"],
                    f"/api/requests/{rid}/attempts"):
            assert client.get(url, headers=auth(keys["bob"])).status_code == 404
            assert client.get(url, headers=auth(keys["admin"])).status_code == 200
            assert client.get(url).status_code == 404
        assert client.put(handle["cancel_url"], headers=auth(keys["bob"])).status_code == 404
        assert client.get(handle["response_url"],
                          headers=auth(keys["alice"])).json()["request_id"] == rid


def test_unauthenticated_callers_create_nothing(secured: ServerProcess) -> None:
    before = {table: count(secured, table) for table in ("requests", "logs")}
    files_before = sorted((secured.data_dir / "files").rglob("*"))
    with httpx.Client(base_url=secured.url) as client:
        assert client.post("/queue/openfal/work", json={}).status_code == 401
        assert client.post("/openfal/work", json={}).status_code == 401
        assert client.post("/openfal/work/stream", json={}).status_code == 401
        assert client.post("/storage/upload/initiate",
                           json={"file_name": "a", "content_type": "text/plain"}
                           ).status_code == 401
        assert client.post("/tokens/", json={"allowed_apps": ["work"]}).status_code == 401
        assert client.post("/files/upload", content=b"x",
                           headers={"authorization": "Bearer forged"}).status_code == 401
    assert {table: count(secured, table) for table in ("requests", "logs")} == before
    assert sorted((secured.data_dir / "files").rglob("*")) == files_before


def test_public_apps_need_no_key(secured: ServerProcess) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as client:
        assert client.post("/openfal/public-echo", json={}).json() == {"ok": True}
        handle = client.post("/queue/openfal/public-echo", json={}).json()
        wait_for(lambda: client.get(handle["status_url"]).status_code == 200)
        assert client.get(handle["response_url"]).json() == {"ok": True}
        schema = client.get("/api/openapi/queue/openapi.json",
                            params={"endpoint_id": "openfal/public-echo"})
        assert schema.status_code == 200
        private = client.get("/api/openapi/queue/openapi.json",
                             params={"endpoint_id": "openfal/work"})
        assert private.status_code == 401


def test_realtime_needs_a_token_or_a_key(secured: ServerProcess,
                                         keys: dict[str, str]) -> None:
    import msgpack
    from websockets.sync.client import connect

    url = secured.url.replace("http", "ws") + "/openfal/realtime-echo/realtime"
    with connect(url) as ws:
        assert b"Unauthorized" in ws.recv(timeout=10).encode()
    with connect(url, additional_headers=auth(keys["alice"])) as ws:
        ws.send(msgpack.packb({"n": 2}))
        assert msgpack.unpackb(ws.recv(timeout=30))["n"] == 2


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


def test_per_key_concurrency_limit(secured: ServerProcess, keys: dict[str, str]) -> None:
    limited = auth(keys["limited"])  # max_concurrency=2; openfal/work has 8 slots
    with httpx.Client(base_url=secured.url, timeout=60) as client:
        handles = [client.post("/queue/openfal/work", json={"seconds": 0.5},
                               headers=limited).json() for _ in range(6)]
        results = []
        for handle in handles:
            wait_for(lambda h=handle: client.get(h["status_url"], headers=limited
                                                 ).status_code == 200, timeout=60)
            results.append(client.get(handle["response_url"], headers=limited).json())
    # Only running requests count: all six ran (none refused), never more than two at once.
    assert max_overlap([(r["started_at"], r["finished_at"]) for r in results]) == 2


def test_direct_runs_over_the_limit_get_429(secured: ServerProcess,
                                            keys: dict[str, str]) -> None:
    limited = auth(keys["limited"])
    with httpx.Client(base_url=secured.url, timeout=60) as client:
        long = [client.post("/queue/openfal/work", json={"seconds": 3, "steps": 30},
                            headers=limited).json() for _ in range(2)]
        wait_for(lambda: all(client.get(h["status_url"], headers=limited).json()["status"]
                             == "IN_PROGRESS" for h in long), what="both slots in use")
        direct = client.post("/openfal/work", json={}, headers=limited)
        assert direct.status_code == 429
        assert direct.headers["retry-after"] == "1"
        assert direct.json()["error_type"] == "concurrency_limit"
        assert "already has 2 requests running" in direct.json()["detail"]
        for handle in long:
            client.put(handle["cancel_url"], headers=limited)


def test_limit_does_not_hold_back_other_keys(secured: ServerProcess,
                                             keys: dict[str, str]) -> None:
    limited, other = auth(keys["limited"]), auth(keys["bob"])
    with httpx.Client(base_url=secured.url, timeout=60) as client:
        for _ in range(2):
            client.post("/queue/openfal/work", json={"seconds": 2}, headers=limited)
        waiting = client.post("/queue/openfal/work", json={"seconds": 0}, headers=limited).json()
        free = client.post("/queue/openfal/work", json={"seconds": 0}, headers=other).json()
        wait_for(lambda: client.get(free["status_url"], headers=other).status_code == 200,
                 what="bob's request to finish while alice's limit is full")
        assert client.get(waiting["status_url"], headers=limited).json()["status"] == "IN_QUEUE"
        wait_for(lambda: client.get(waiting["status_url"], headers=limited).status_code == 200,
                 timeout=30)


def test_usage_totals_match_the_requests(start_server) -> None:
    server = start_server("--app", f"{APPS}::Work", auth=True)
    admin = auth(server.admin_key)
    with httpx.Client(base_url=server.url, headers=admin, timeout=30) as client:
        key = client.post("/api/keys", json={"name": "usage"}).json()["key"]
        since = time.time() - 1
        for steps in (1, 2, 3):
            client.post("/openfal/work", json={"steps": steps}, headers=auth(key))
        client.post("/openfal/work", json={"fail": "error"}, headers=auth(key))
        threads = [threading.Thread(target=lambda: client.post("/openfal/work/edit", json={}))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        def rows() -> list[dict]:
            usage = client.get("/api/usage", params={"since": since}).json()["usage"]
            return usage if sum(r["requests"] for r in usage) == 6 else []

        usage = wait_for(rows, what="all six requests in the ledger")
    key_id = key.split(":")[0]
    work = next(r for r in usage if r["key_id"] == key_id and r["endpoint_id"] == "openfal/work")
    assert (work["requests"], work["failed"], work["attempts"]) == (4, 1, 4)
    assert work["billable_units"] == 6
    assert work["run_seconds"] >= 0 and work["queue_seconds"] >= 0
    edit = next(r for r in usage if r["endpoint_id"] == "openfal/work/edit")
    assert edit["key_id"] == server.admin_key.split(":")[0]
    assert edit["requests"] == 2


def test_realtime_messages_count_against_the_key_limit(secured: ServerProcess,
                                                       keys: dict[str, str]) -> None:
    import msgpack
    from websockets.sync.client import connect

    limited = auth(keys["limited"])
    url = secured.url.replace("http", "ws") + "/openfal/realtime-echo/realtime"
    with httpx.Client(base_url=secured.url, timeout=60) as client:
        long = [client.post("/queue/openfal/work", json={"seconds": 3, "steps": 30},
                            headers=limited).json() for _ in range(2)]
        wait_for(lambda: all(client.get(h["status_url"], headers=limited).json()["status"]
                             == "IN_PROGRESS" for h in long), what="both slots in use")
        with connect(url, additional_headers=limited) as ws:
            ws.send(msgpack.packb({"n": 1}))
            frame = ws.recv(timeout=30)
        for handle in long:
            client.put(handle["cancel_url"], headers=limited)
    assert isinstance(frame, str) and "CONCURRENCY_LIMIT" in frame
    assert "already has 2 requests running" in frame


def mint_token(server: ServerProcess, key: str) -> str:
    response = httpx.post(server.url + "/tokens/", json={"allowed_apps": ["realtime-echo"]},
                          headers=auth(key))
    assert response.status_code == 201, response.text
    return response.json()


def realtime_url(server: ServerProcess, token: str) -> str:
    return (server.url.replace("http", "ws") + "/openfal/realtime-echo/realtime"
            f"?fal_jwt_token={token}")


def test_realtime_tokens_act_for_the_key_that_minted_them(
        secured: ServerProcess, keys: dict[str, str]) -> None:
    import msgpack
    from websockets.sync.client import connect

    limited = auth(keys["limited"])
    with httpx.Client(base_url=secured.url, timeout=60) as client:
        since = time.time() - 1
        with connect(realtime_url(secured, mint_token(secured, keys["alice"]))) as ws:
            ws.send(msgpack.packb({"n": 7}))
            assert msgpack.unpackb(ws.recv(timeout=30))["n"] == 7
        long = [client.post("/queue/openfal/work", json={"seconds": 3, "steps": 30},
                            headers=limited).json() for _ in range(2)]
        wait_for(lambda: all(client.get(h["status_url"], headers=limited).json()["status"]
                             == "IN_PROGRESS" for h in long), what="both slots in use")
        with connect(realtime_url(secured, mint_token(secured, keys["limited"]))) as ws:
            ws.send(msgpack.packb({"n": 1}))
            frame = ws.recv(timeout=30)
        for handle in long:
            client.put(handle["cancel_url"], headers=limited)

        def realtime_usage() -> list[dict]:
            usage = client.get("/api/usage", params={"since": since},
                               headers=auth(keys["admin"])).json()["usage"]
            return [row for row in usage
                    if row["endpoint_id"] == "openfal/realtime-echo/realtime"]

        rows = wait_for(realtime_usage, what="the realtime message in the ledger")
    assert isinstance(frame, str) and "CONCURRENCY_LIMIT" in frame
    assert [row["key_id"] for row in rows] == [keys["alice"].split(":")[0]]


def test_revoking_a_key_ends_its_sessions_and_refuses_its_tokens(
        secured: ServerProcess, keys: dict[str, str]) -> None:
    import msgpack
    from websockets.sync.client import connect

    admin = auth(keys["admin"])
    with httpx.Client(base_url=secured.url, timeout=30, headers=admin) as client:
        made = client.post("/api/keys", json={"name": "soon revoked"}).json()["key"]
        token = mint_token(secured, made)
        with connect(realtime_url(secured, token)) as live:
            live.send(msgpack.packb({"n": 3}))
            assert msgpack.unpackb(live.recv(timeout=30))["n"] == 3
            assert client.delete(f"/api/keys/{made.split(':')[0]}").status_code == 200
            ended = json.loads(live.recv(timeout=30))
            assert ended["error"] == "Unauthorized"
        with connect(realtime_url(secured, token)) as late:
            assert json.loads(late.recv(timeout=30))["error"] == "Unauthorized"


def test_a_key_used_once_is_still_checked_on_every_request(
        secured: ServerProcess, keys: dict[str, str]) -> None:
    # The gateway remembers headers it has verified (no hash per request): a wrong secret
    # for a key just used must still be refused, and a revoked key at once.
    admin = auth(keys["admin"])
    with httpx.Client(base_url=secured.url, timeout=30) as client:
        made = client.post("/api/keys", json={"name": "checked"}, headers=admin).json()["key"]
        key_id, secret = made.split(":")
        assert client.get("/v1/models", headers=auth(made)).status_code == 200
        assert client.get("/v1/models", headers=auth(made)).status_code == 200
        wrong = f"{key_id}:{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
        assert client.get("/v1/models", headers=auth(wrong)).status_code == 401
        assert client.delete(f"/api/keys/{key_id}", headers=admin).status_code == 200
        assert client.get("/v1/models", headers=auth(made)).status_code == 401
