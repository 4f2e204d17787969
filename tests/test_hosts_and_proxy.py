"""Host-name routing on one listener, and the JS client's proxy protocol served natively."""

from __future__ import annotations

import httpx

from conftest import wait_for


def test_queue_host_serves_the_queue_api_at_the_root(client: httpx.Client) -> None:
    queue_host = {"host": "queue.fal.run"}
    submitted = client.post("/openfal/echo", json={"prompt": "via host"}, headers=queue_host)
    assert submitted.status_code == 200, submitted.text
    handle = submitted.json()
    request_id = handle["request_id"]
    # URLs built for the caller: the queue host has no /queue prefix.
    assert handle["status_url"] == (
        f"http://queue.fal.run/openfal/echo/requests/{request_id}/status")

    def done() -> bool:
        status = client.get(f"/openfal/echo/requests/{request_id}/status", headers=queue_host)
        return status.status_code == 200
    wait_for(done, what="completion")
    result = client.get(f"/openfal/echo/requests/{request_id}", headers=queue_host)
    assert result.json() == {"text": "via host"}


def test_run_rest_and_cdn_hosts(client: httpx.Client) -> None:
    run = client.post("/openfal/echo", json={"prompt": "run host"}, headers={"host": "fal.run"})
    assert run.json() == {"text": "run host"}
    initiate = client.post("/storage/upload/initiate", headers={"host": "rest.fal.ai"},
                           json={"content_type": "text/plain", "file_name": "a.txt"})
    assert initiate.status_code == 200
    assert set(initiate.json()) == {"upload_url", "file_url"}
    assert client.get("/health", headers={"host": "v3.fal.media"}).status_code == 200


def test_path_prefix_routes_still_work_for_plain_clients(client: httpx.Client) -> None:
    handle = client.post("/queue/openfal/echo", json={"prompt": "plain"}).json()
    assert handle["status_url"].startswith(str(client.base_url) + "/queue/openfal/echo/")


def proxied(client: httpx.Client, method: str, target: str, **kwargs) -> httpx.Response:
    headers = {"x-fal-target-url": target, "origin": "http://app.example",
               **kwargs.pop("headers", {})}
    return client.request(method, "/api/fal/proxy", headers=headers, **kwargs)


def test_js_proxy_protocol_full_queue_flow(client: httpx.Client) -> None:
    submitted = proxied(client, "POST", "https://queue.fal.run/openfal/echo",
                        json={"prompt": "proxied"})
    assert submitted.status_code == 200, submitted.text
    assert submitted.headers["access-control-allow-origin"] == "http://app.example"
    assert "x-fal-request-id" in submitted.headers["access-control-expose-headers"]
    handle = submitted.json()
    assert handle["status_url"].startswith("https://queue.fal.run/openfal/echo/requests/")

    wait_for(lambda: proxied(client, "GET", handle["status_url"] + "?logs=1").status_code == 200,
             what="completion")
    result = proxied(client, "GET", handle["response_url"])
    assert result.json() == {"text": "proxied"}
    assert result.headers["x-fal-request-id"] == handle["request_id"]
    cancel = proxied(client, "PUT", handle["cancel_url"])
    assert cancel.status_code == 400


def test_js_proxy_direct_run_and_errors(client: httpx.Client) -> None:
    run = proxied(client, "POST", "https://fal.run/openfal/echo", json={"prompt": "direct"})
    assert run.json() == {"text": "direct"}
    invalid = proxied(client, "POST", "https://fal.run/openfal/echo", json={})
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "prompt"]
    assert invalid.headers["access-control-allow-origin"] == "http://app.example"


def test_js_proxy_refuses_other_targets_and_answers_preflight(client: httpx.Client) -> None:
    missing = client.post("/api/fal/proxy", json={})
    assert missing.status_code == 400
    elsewhere = proxied(client, "POST", "https://example.com/anything", json={})
    assert elsewhere.status_code == 400
    preflight = client.options("/api/fal/proxy", headers={
        "origin": "http://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, x-fal-target-url"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-headers"] == "content-type, x-fal-target-url"
