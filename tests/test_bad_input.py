"""Bad input gets a clear 4xx naming the problem, and leaves no request behind."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from conftest import ServerProcess


def request_count(server: ServerProcess) -> int:
    with sqlite3.connect(server.data_dir / "openfal.db") as conn:
        return conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]


@pytest.mark.parametrize("prefix", ["", "/queue"])
@pytest.mark.parametrize(("body", "loc", "type_"), [
    (b'{"prompt": ', ["body"], "json_invalid"),
    (b'{"prompt": 5}', ["body", "prompt"], "string_type"),
    (b'{}', ["body", "prompt"], "missing"),
    (b'{"prompt": "x", "count": 9}', ["body", "count"], "less_than_equal"),
    (b'{"prompt": "x", "colour": "red"}', ["body", "colour"], "extra_forbidden"),
    (b'[1, 2]', ["body"], "model_type"),
])
def test_invalid_bodies_are_422_with_the_field(server: ServerProcess, client: httpx.Client,
                                               prefix: str, body: bytes, loc: list,
                                               type_: str) -> None:
    before = request_count(server)
    response = client.post(f"{prefix}/openfal/strict", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["type"] == type_
    assert detail[0]["loc"] == loc
    assert request_count(server) == before


@pytest.mark.parametrize("path", ["/openfal/nope", "/queue/openfal/nope", "/nobody/echo",
                                  "/openfal/echo/not-a-path", "/queue/single"])
def test_unknown_endpoints_are_404(client: httpx.Client, path: str) -> None:
    response = client.post(path, json={"prompt": "x"})
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


@pytest.mark.parametrize("suffix", ["/status", "", "/cancel", "/status/stream"])
def test_unknown_request_ids_are_404(client: httpx.Client, suffix: str) -> None:
    url = f"/queue/openfal/echo/requests/00000000-0000-0000-0000-000000000000{suffix}"
    response = client.put(url) if suffix == "/cancel" else client.get(url)
    assert response.status_code == 404
    assert response.json()["detail"] == "Request not found"


def test_oversized_body_is_413(start_server) -> None:
    server = start_server("--max-body-mb", "0.01")
    with server.client() as client:
        big = {"prompt": "x" * 20_000}
        for path in ("/openfal/echo", "/queue/openfal/echo"):
            response = client.post(path, json=big)
            assert response.status_code == 413
            assert response.json()["error_type"] == "request_too_large"
        # Also without a declared length (chunked upload).
        chunks = iter([b'{"prompt": "', b"x" * 20_000, b'"}'])
        response = client.post("/queue/openfal/echo", content=chunks)
        assert response.status_code == 413
        assert client.post("/queue/openfal/echo", json={"prompt": "small"}).status_code == 200
    assert request_count(server) == 1


@pytest.mark.parametrize(("header", "value"), [
    ("X-Fal-Request-Timeout", "soon"),
    ("X-Fal-Request-Timeout", "-1"),
    ("X-Fal-Queue-Priority", "urgent"),
])
def test_bad_platform_headers_are_422(client: httpx.Client, header: str, value: str) -> None:
    response = client.post("/queue/openfal/echo", json={"prompt": "x"}, headers={header: value})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", header.lower()]


@pytest.mark.parametrize("query", ["fal_max_queue_length=many",
                                   "fal%5Fmax%5Fqueue%5Flength=many"])  # percent-escaped
def test_bad_max_queue_length_is_422(client: httpx.Client, query: str) -> None:
    response = client.post(f"/queue/openfal/echo?{query}", json={"prompt": "x"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "fal_max_queue_length"]


def test_a_max_queue_length_past_any_queue_is_no_bound(client: httpx.Client) -> None:
    # Larger than any integer the store counts with: no queue is that long.
    response = client.post("/queue/openfal/echo", params={"fal_max_queue_length": "9" * 40},
                           json={"prompt": "x"})
    assert response.status_code == 200


def test_wrong_method_is_405_not_500(client: httpx.Client) -> None:
    assert client.put("/openfal/echo").status_code == 405
    assert client.delete("/queue/openfal/echo").status_code == 405
