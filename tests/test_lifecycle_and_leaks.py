"""The object lifecycle header, validated once for runs, submits, streams and uploads; and
what error bodies and the app listing give away."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import APPS, ServerProcess

PREFERENCE = "x-fal-object-lifecycle-preference"
UPLOAD_ONLY = "x-fal-object-lifecycle"
WEEK = 7 * 24 * 3600
BAD_LIFECYCLES = [
    pytest.param('"1d"', id="string"),
    pytest.param("[3600]", id="list"),
    pytest.param("not json", id="not-json"),
    pytest.param('{"expiration_duration_seconds": "3600"}', id="duration-string"),
    pytest.param('{"expiration_duration_seconds": 1.5}', id="duration-fraction"),
    pytest.param('{"expiration_duration_seconds": true}', id="duration-bool"),
    pytest.param('{"expiration_duration_seconds": -1}', id="negative"),
    pytest.param('{"expiration_duration_seconds": 1000000000000}', id="beyond-100-years"),
    pytest.param('{"initial_acl": {"default": "everyone"}}', id="bad-acl"),
    pytest.param('{"a": ' * 3000 + "1" + "}" * 3000, id="deep-objects"),
    pytest.param("[" * 5000 + "]" * 5000, id="deep-lists"),
    pytest.param('{"pad": "' + "x" * 40_000 + '"}', id="oversize"),
]


def request_count(server: ServerProcess) -> int:
    with sqlite3.connect(server.data_dir / "openfal.db") as conn:
        return conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]


def stored_expiry(server: ServerProcess, url: str) -> float | None:
    file_id = urlsplit(url).path.split("/")[2]
    record = server.data_dir / "files" / f"{file_id}.json"
    return json.loads(record.read_text())["expires_at"]


def assert_lifecycle_422(response: httpx.Response, header: str) -> None:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"][:2] == ["header", header]
    assert detail[0]["msg"] and detail[0]["type"]
    assert len(response.content) < 3000  # the value is not echoed back whole


def run_media(client: httpx.Client, lifecycle: str | None) -> httpx.Response:
    """A run of the Media app, whose output file is stored under the request's lifecycle."""
    document = "data:text/plain;base64," + base64.b64encode(b"kept a while").decode()
    headers = {} if lifecycle is None else {PREFERENCE: lifecycle}
    return client.post("/openfal/media", json={"document": document}, headers=headers,
                       timeout=60)


def cdn_headers(client: httpx.Client) -> dict[str, str]:
    token = client.post("/storage/auth/token").json()
    return {"authorization": f"{token['token_type']} {token['token']}"}


# Runs, submits and streams: a bad header is a 422 before the request exists
@pytest.mark.parametrize("path", ["/openfal/echo", "/openfal/echo/stream",
                                  "/queue/openfal/echo"])
@pytest.mark.parametrize("value", BAD_LIFECYCLES)
def test_bad_lifecycle_on_calls_is_422_and_no_request(
        server: ServerProcess, client: httpx.Client, path: str, value: str) -> None:
    before = request_count(server)
    response = client.post(path, json={"prompt": "x"}, headers={PREFERENCE: value})
    assert_lifecycle_422(response, PREFERENCE)
    assert request_count(server) == before


@pytest.mark.parametrize(("value", "expected_ttl"), [
    ('{"expiration_duration_seconds": 120, "initial_acl": {"default": "forbid"}}', 120),
    ('{"initial_acl": {"default": "hide", "rules": [{"user": "u", "decision": "allow"}]}}',
     WEEK),
    ("{}", WEEK),
    (None, WEEK),
])
def test_run_outputs_expire_as_asked(server: ServerProcess, client: httpx.Client,
                                     value: str | None, expected_ttl: int) -> None:
    response = run_media(client, value)
    assert response.status_code == 200, response.text
    url = response.json()["echo"]["url"]
    assert client.get(url).content == b"kept a while"
    expires_at = stored_expiry(server, url)
    assert expires_at is not None
    assert abs(expires_at - (time.time() + expected_ttl)) < 60


def test_run_output_kept_forever_or_gone_at_once(server: ServerProcess,
                                                 client: httpx.Client) -> None:
    forever = run_media(client, '{"expiration_duration_seconds": null}').json()["echo"]["url"]
    assert stored_expiry(server, forever) is None
    assert client.get(forever).status_code == 200
    # 0 seconds: the file expires at once, so its URL is never served.
    gone = run_media(client, '{"expiration_duration_seconds": 0}').json()["echo"]["url"]
    assert client.get(gone).status_code == 404


# Uploads: either header name, validated the same way
@pytest.mark.parametrize("header", [PREFERENCE, UPLOAD_ONLY])
@pytest.mark.parametrize("value", BAD_LIFECYCLES)
def test_bad_lifecycle_on_uploads_is_422(client: httpx.Client, header: str,
                                         value: str) -> None:
    initiated = client.post("/storage/upload/initiate", headers={header: value},
                            json={"content_type": "text/plain", "file_name": "a.txt"})
    assert_lifecycle_422(initiated, header)
    uploaded = client.post("/files/upload", content=b"x",
                           headers={**cdn_headers(client), header: value})
    assert_lifecycle_422(uploaded, header)


def test_upload_lifecycle_zero_and_default(server: ServerProcess,
                                           client: httpx.Client) -> None:
    def upload(lifecycle: str) -> str:
        response = client.post("/files/upload", content=b"data", headers={
            **cdn_headers(client), UPLOAD_ONLY: lifecycle})
        assert response.status_code == 200, response.text
        return response.json()["access_url"]

    assert client.get(upload('{"expiration_duration_seconds": 0}')).status_code == 404
    default = upload('{"initial_acl": {"default": "allow"}}')
    assert client.get(default).content == b"data"
    assert abs(stored_expiry(server, default) - (time.time() + WEEK)) < 60


def test_server_document_describes_the_accepted_lifecycle(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    initiate = document["paths"]["/storage/upload/initiate"]["post"]
    schema = next(p for p in initiate["parameters"] if p["name"].lower() == PREFERENCE)[
        "content"]["application/json"]["schema"]
    name = schema["$ref"].rsplit("/", 1)[-1]
    duration = document["components"]["schemas"][name]["properties"][
        "expiration_duration_seconds"]
    assert {"type": "integer", "minimum": 0} in [
        {k: v for k, v in option.items() if k in ("type", "minimum")}
        for option in duration["anyOf"]]
    assert {"type": "null"} in duration["anyOf"]


# What a 422 repeats of the input
@pytest.mark.parametrize("prefix", ["", "/queue"])
def test_422_does_not_echo_a_long_input_whole(client: httpx.Client, prefix: str) -> None:
    long_text = "y" * 260_000
    response = client.post(f"{prefix}/openfal/strict",
                           json={"prompt": "x", "count": long_text})
    assert response.status_code == 422
    assert len(response.content) < 2000
    [item] = response.json()["detail"]
    assert (item["loc"], item["type"]) == (["body", "count"], "int_parsing")
    assert item["msg"]
    assert item["input"].startswith("yyyy")
    assert item["input"].endswith("(259800 more characters)")


def test_422_summarises_a_large_container(client: httpx.Client) -> None:
    response = client.post("/openfal/strict", json=[{"nested": [1, 2, 3]}] * 5000)
    assert response.status_code == 422
    assert len(response.content) < 2000
    [item] = response.json()["detail"]
    assert (item["loc"], item["type"]) == (["body"], "model_type")
    assert item["input"][:2] == ["{1 keys}", "{1 keys}"]
    assert item["input"][-1] == "... 4990 more items"


def test_422_lists_at_most_50_errors(client: httpx.Client) -> None:
    response = client.post("/tokens/", json={"allowed_apps": list(range(1000))})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == 51
    assert detail[0]["loc"] == ["body", "allowed_apps", 0]
    assert detail[-1] == {"loc": ["body"], "type": "too_many_errors",
                          "msg": "950 more errors not shown"}


# The app listing
def test_app_listing_hides_server_paths_from_api_keys(start_server) -> None:
    server = start_server("--app", f"{APPS}::Strict", auth=True)
    with server.client(headers={"authorization": f"Key {server.admin_key}"}) as admin:
        key = admin.post("/api/keys", json={"scope": "API", "name": "user"}).json()["key"]
        as_admin = admin.get("/api/apps")
        as_key = admin.get("/api/apps", headers={"authorization": f"Key {key}"})
    assert as_key.status_code == 200
    assert str(APPS) not in as_key.text
    by_id = {e["endpoint_id"]: e for e in as_key.json()["endpoints"]}
    assert "app_ref" not in by_id["openfal/strict"]
    assert by_id["openfal/strict"]["config"]["max_concurrency"] >= 1
    admin_view = {e["endpoint_id"]: e for e in as_admin.json()["endpoints"]}
    assert admin_view["openfal/strict"]["app_ref"] == f"{APPS}::Strict"


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_server_uses_almost_no_cpu(start_server) -> None:
    """With every built-in app served and nothing to do, the gateway sleeps: its pools'
    claims wait for work rather than asking the store again and again (a loop that once
    took more than a core)."""
    server = start_server()
    with server.client() as client:
        assert client.get("/health").status_code == 200
    before = _cpu_seconds(server.pid)
    time.sleep(3)  # the quantity measured is what an idle server does over time
    assert _cpu_seconds(server.pid) - before < 0.5
