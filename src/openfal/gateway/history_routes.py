"""The request history (docs/request-history.md): the hosted platform's
``GET /v1/models/requests/by-endpoint`` and ``DELETE /v1/models/requests/{id}/payloads``,
and openfal's ``GET /v1/models/requests`` (any endpoint, by state).

A key sees the requests it made; an ADMIN key sees every request. Pages go newest first,
``limit`` at a time; ``next_cursor`` (opaque: the last request's ``(created_at, id)``)
continues after the page, so a page boundary never repeats nor skips a request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, FiniteFloat
from starlette.requests import Request
from starlette.responses import Response
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from openfal.files.base import FileStorage
from openfal.gateway.auth import ensure_visible, principal
from openfal.gateway.http import HTTPError, json_response, read_query
from openfal.server import Platform
from openfal.store.base import HistoryQuery, HistoryStatus, RequestRecord, Status

DEFAULT_SPAN = 24 * 3600.0  # without ``start``: the last day


def _decode_cursor(value: str) -> Any:
    """A ``next_cursor`` as the ``[created_at, id]`` it stands for (ValueError if it is
    not one)."""
    try:
        return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except ValueError:
        raise ValueError("not a next_cursor this server gave") from None


def _encode_cursor(record: RequestRecord) -> str:
    text = json.dumps([record.created_at, record.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _utc(value: datetime) -> datetime:
    """A time without an offset is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


Cursor = Annotated[tuple[FiniteFloat, str], BeforeValidator(_decode_cursor)]
Time = Annotated[datetime, AfterValidator(_utc)]


class RequestsQuery(BaseModel):
    """The query string of ``GET /v1/models/requests``; unknown parameters are ignored."""

    endpoint_id: str | None = Field(default=None, description="Only this endpoint's.")
    status: HistoryStatus | None = Field(default=None, description="Only those in this state.")
    limit: int = Field(default=50, ge=1, le=100, description="Requests per page.")
    cursor: Cursor | None = Field(default=None, description="The previous page's next_cursor.")
    start: Time | None = Field(default=None, description="Made at or after (default: a day ago).")
    end: Time | None = Field(default=None, description="Made before.")


class ByEndpointQuery(RequestsQuery):
    """``GET /v1/models/requests/by-endpoint``: the endpoint is required."""

    endpoint_id: str = Field(description="The endpoint whose requests are listed.")


class HistoryItem(TypedDict):
    request_id: str
    endpoint_id: str
    sent_at: str
    started_at: str | None
    ended_at: str | None
    status_code: int | None
    duration: float | None  # seconds from the first attempt's start to the end
    json_input: Any
    json_output: Any
    status: str
    error: str | None


class HistoryPage(TypedDict):
    items: list[HistoryItem]
    next_cursor: str | None
    has_more: bool


async def list_requests(request: Request) -> Response:
    return await _page(request, read_query(request, RequestsQuery))


async def list_by_endpoint(request: Request) -> Response:
    return await _page(request, read_query(request, ByEndpointQuery))


async def delete_payloads(request: Request) -> Response:
    """Drop a finished request's input and output JSON and delete its output files (those
    made while it ran that its result names; its input files stay)."""
    platform: Platform = request.app.state.platform
    record = await platform.store.get_request(request.path_params["request_id"])
    if record is None:
        raise HTTPError(404, "Request not found", "request_not_found")
    ensure_visible(request, record.key_id)
    if record.status is not Status.COMPLETED:
        raise HTTPError(409, "The request has not finished: its input is still needed",
                        "request_not_finished")
    deleted = await asyncio.to_thread(_delete_outputs, platform.files, record,
                                      _output_file_ids(platform.public_url, record))
    await platform.store.drop_payloads(record.id)
    platform.dispatcher.forget(record.id)
    return json_response({"request_id": record.id, "deleted_files": deleted})


async def _page(request: Request, asked: RequestsQuery) -> Response:
    platform: Platform = request.app.state.platform
    records = await platform.store.history(HistoryQuery(
        start=asked.start.timestamp() if asked.start else time.time() - DEFAULT_SPAN,
        end=asked.end.timestamp() if asked.end else None, endpoint_id=asked.endpoint_id,
        key_id=_owner_filter(request), status=asked.status, before=asked.cursor,
        limit=asked.limit + 1))
    page, has_more = records[:asked.limit], len(records) > asked.limit
    listing: HistoryPage = {"items": [_item(record) for record in page], "has_more": has_more,
                            "next_cursor": _encode_cursor(page[-1]) if has_more else None}
    return json_response(listing)


def _owner_filter(request: Request) -> str | None:
    """Whose requests the caller sees: its key's, or (None) everyone's for an ADMIN key."""
    caller = principal(request)
    assert caller is not None  # the routes need a key
    return None if caller.is_admin else caller.key_id


def _item(record: RequestRecord) -> HistoryItem:
    started, ended = record.started_at, record.finished_at
    return {"request_id": record.id, "endpoint_id": record.endpoint_id,
            "sent_at": _iso(record.created_at),
            "started_at": _iso(started) if started is not None else None,
            "ended_at": _iso(ended) if ended is not None else None,
            "status_code": record.result_status,
            "duration": ended - started if started is not None and ended is not None else None,
            "json_input": _json(record.payload), "json_output": _json(record.result_body),
            "status": record.history_status.value, "error": record.error}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _json(data: bytes | None) -> Any:
    """A stored body as JSON; None when dropped, or not JSON (a realtime frame's msgpack)."""
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _output_file_ids(public_url: str, record: RequestRecord) -> set[str]:
    """The ids of this server's files that the result names and the input does not."""
    prefix = f"{public_url}/files/"

    def named(data: bytes | None) -> set[str]:
        return {text[len(prefix):].split("/", 1)[0] for text in _strings(_json(data))
                if text.startswith(prefix)}
    return named(record.result_body) - named(record.payload)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _delete_outputs(files: FileStorage, record: RequestRecord, file_ids: set[str]) -> int:
    """Delete the files made since the request was (a file older than it is an input the
    caller uploaded, whatever the result says); how many."""
    deleted = 0
    for file_id in file_ids:
        stored = files.stat(file_id)
        if (stored is not None and stored.created_at >= record.created_at
                and files.delete(file_id)):
            deleted += 1
    return deleted
