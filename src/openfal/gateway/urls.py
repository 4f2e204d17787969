"""The URLs the gateway hands out. One place, so every route and host agrees on them."""

from __future__ import annotations

from starlette.requests import Request


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def queue_urls(request: Request, app_id: str, request_id: str) -> dict[str, str]:
    response_url = f"{base_url(request)}/queue/{app_id}/requests/{request_id}"
    return {"response_url": response_url, "status_url": response_url + "/status",
            "cancel_url": response_url + "/cancel"}


def schema_url(request: Request, endpoint_id: str) -> str:
    return f"{base_url(request)}/api/openapi/queue/openapi.json?endpoint_id={endpoint_id}"
