"""The storage API in the fal wire format: the official clients' upload flows, and the
stored files served back.

URLs (handed out absolute, from ``Platform.public_url``; builders in ``urls.py``)::

    POST /storage/auth/token                           a CDN bearer token
    POST /storage/upload/initiate[-multipart]          {upload_url, file_url}
    PUT  /storage/uploads/{upload_id}?signature=       the whole file (= upload_url)
    PUT  /storage/uploads/{upload_id}/{n}?signature=   one part (JS multipart)
    POST /storage/uploads/{upload_id}/complete?signature=
    POST /files/upload                                 (bearer) {access_url}
    POST /files/upload/multipart                       (bearer) {access_url, uploadId}
    PUT  /files/{file_id}/{name}/multipart/{upload_id}/{n}         (bearer)
    POST /files/{file_id}/{name}/multipart/{upload_id}/complete    (bearer)
    GET  /files/{file_id}/{name}                       the file (= file_url, access_url)

``storage_type`` (gcs, fal-cdn-v3, ...) is accepted and ignored: there is one store, and
its files are public (``initial_acl`` in lifecycle headers is ignored too). The lifecycle
headers are read by ``files/lifecycle.py``.

Initiated uploads are multipart uploads underneath, so ``file_url`` is known before the
bytes arrive; a PUT of the whole file is part 1, completed at once. Bodies are written to
the storage's staging folder in large writes off the event loop, never held in memory.
"""

from __future__ import annotations

import asyncio
import functools
import mimetypes
import os
import re
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from openfal.files.base import (
    MAX_PART_NUMBER,
    FileTooLarge,
    InvalidParts,
    NotFound,
    StoredFile,
    normalize_etag,
)
from openfal.files.lifecycle import UPLOAD_HEADERS, InvalidLifecycle, requested_lifecycle
from openfal.files.signing import UPLOAD
from openfal.gateway.http import HTTPError, field_error, json_response, read_model
from openfal.gateway.urls import file_url, signed_upload_url
from openfal.server import Platform

TOKEN_TTL_SECONDS = 3600.0
SPOOL_WRITE_BYTES = 1024 * 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"
CORS_HEADERS = {
    "access-control-allow-origin": "*",
    "access-control-expose-headers": "ETag, Content-Length, Content-Range, Accept-Ranges",
}
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_CONTENT_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(\s*;[ -~]*)?")
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")

P = ParamSpec("P")
T = TypeVar("T")


class InitiateBody(BaseModel):
    content_type: str | None = None
    file_name: str | None = None


class _Part(BaseModel):
    part_number: int = Field(alias="partNumber", ge=1, le=MAX_PART_NUMBER)
    etag: str


class _CompleteBody(BaseModel):
    parts: list[_Part] = Field(min_length=1)


def _cors(handler: Callable[[Request], Awaitable[Response]]
          ) -> Callable[[Request], Awaitable[Response]]:
    """Let browsers read the answer (errors included) from any origin."""
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            response = await handler(request)
        except HTTPError as exc:
            exc.headers.update(CORS_HEADERS)
            raise
        response.headers.update(CORS_HEADERS)
        return response
    return wrapped


# Routes: tokens and initiated (signed URL) uploads
@_cors
async def cdn_token(request: Request) -> Response:
    platform = _platform(request)
    token, expires = platform.signer.issue_token(time.time(), TOKEN_TTL_SECONDS)
    return json_response({"token": token, "token_type": "Bearer",
                          "base_url": platform.public_url,
                          "expires_at": datetime.fromtimestamp(expires, UTC).isoformat()})


@_cors
async def initiate(request: Request) -> Response:
    """Both initiate and initiate-multipart: the client then PUTs the whole file to
    ``upload_url``, or parts under it and a completion."""
    platform = _platform(request)
    expires_at = _expires_at(request, platform)
    body = await read_model(request, InitiateBody, platform.settings.max_body_bytes)
    content_type = _content_type(body.content_type)
    file_name = _file_name(body.file_name, content_type)
    upload = await _storage(platform.files.create_multipart, file_name=file_name,
                            content_type=content_type, expires_at=expires_at)
    signature = platform.signer.sign(UPLOAD, upload.upload_id)
    return json_response({
        "upload_url": signed_upload_url(platform.public_url, upload.upload_id, signature),
        "file_url": file_url(platform.public_url, upload.file_id, file_name)})


@_cors
async def put_signed_upload(request: Request) -> Response:
    platform = _platform(request)
    upload_id = _signed_upload_id(request, platform)
    async with _spooled_body(request, platform) as path:
        etag = await _storage(platform.files.put_part_path, upload_id, 1, path, move=True)
    stored = await _storage(platform.files.complete_multipart, upload_id, [(1, etag)],
                            max_size=platform.settings.max_upload_bytes)
    return json_response({"file_url": _url(platform, stored)},
                         headers={"etag": _quoted(stored.etag)})


@_cors
async def put_signed_part(request: Request) -> Response:
    platform = _platform(request)
    return await _put_part(request, platform, _signed_upload_id(request, platform))


@_cors
async def complete_signed(request: Request) -> Response:
    platform = _platform(request)
    stored = await _complete(request, platform, _signed_upload_id(request, platform))
    return json_response({"file_url": _url(platform, stored)})


# Routes: the CDN (bearer token) uploads
@_cors
async def upload(request: Request) -> Response:
    platform = _platform(request)
    _require_token(request, platform)
    content_type, file_name = _file_headers(request)
    expires_at = _expires_at(request, platform)
    async with _spooled_body(request, platform) as path:
        stored = await _storage(platform.files.put_path, path, file_name=file_name,
                                content_type=content_type, expires_at=expires_at, move=True)
    return json_response({"access_url": _url(platform, stored)})


@_cors
async def create_multipart(request: Request) -> Response:
    platform = _platform(request)
    _require_token(request, platform)
    content_type, file_name = _file_headers(request)
    upload = await _storage(platform.files.create_multipart, file_name=file_name,
                            content_type=content_type,
                            expires_at=_expires_at(request, platform))
    return json_response({"access_url": file_url(platform.public_url, upload.file_id,
                                                  file_name),
                          "uploadId": upload.upload_id})


@_cors
async def put_cdn_part(request: Request) -> Response:
    platform = _platform(request)
    _require_token(request, platform)
    return await _put_part(request, platform, request.path_params["upload_id"])


@_cors
async def complete_cdn(request: Request) -> Response:
    platform = _platform(request)
    _require_token(request, platform)
    stored = await _complete(request, platform, request.path_params["upload_id"])
    return json_response({"access_url": _url(platform, stored)})


# Routes: serving files
@_cors
async def serve_file(request: Request) -> Response:
    """GET and HEAD of ``/files/{file_id}[/{name}]``: ETag/If-None-Match, one byte range,
    streamed. Any malformed path is a 404 (the storage rejects anything but a real id)."""
    platform = _platform(request)
    file_id = request.path_params["file_path"].split("/", 1)[0]
    stored = await _storage(platform.files.stat, file_id)
    if stored is None:
        raise HTTPError(404, "File not found", "file_not_found")
    headers = {"etag": _quoted(stored.etag), "accept-ranges": "bytes",
               "content-type": stored.content_type,
               "content-disposition": f"inline; filename*=UTF-8''"
                                      f"{quote(stored.file_name, safe='')}",
               # Uploaded HTML must not run as a page of this origin.
               "x-content-type-options": "nosniff", "content-security-policy": "sandbox"}
    if _etag_listed(request.headers.get("if-none-match"), stored.etag):
        return Response(status_code=304, headers=headers)
    start, stop = 0, stored.size
    status = 200
    byte_range = _requested_range(request, stored)
    if byte_range is not None:
        start, stop = byte_range
        status = 206
        headers["content-range"] = f"bytes {start}-{stop - 1}/{stored.size}"
    headers["content-length"] = str(stop - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    chunks = await _storage(platform.files.read, stored.id, start, stop)
    return StreamingResponse(chunks, status, headers)


async def preflight(request: Request) -> Response:
    """CORS preflight for every storage and file URL."""
    requested = request.headers.get("access-control-request-headers")
    return Response(status_code=204, headers={
        **CORS_HEADERS, "access-control-allow-methods": "GET, HEAD, PUT, POST, OPTIONS",
        # A wildcard would not cover Authorization, so echo what is asked for.
        "access-control-allow-headers": requested or "*", "access-control-max-age": "86400"})


# Shared steps
async def _put_part(request: Request, platform: Platform, upload_id: str) -> Response:
    part_number: int = request.path_params["part_number"]
    if not 1 <= part_number <= MAX_PART_NUMBER:
        raise field_error(["path", "part_number"],
                          f"part numbers go from 1 to {MAX_PART_NUMBER}")
    async with _spooled_body(request, platform) as path:
        etag = await _storage(platform.files.put_part_path, upload_id, part_number, path,
                              move=True)
    return json_response({"partNumber": part_number, "etag": _quoted(etag)},
                         headers={"etag": _quoted(etag)})


async def _complete(request: Request, platform: Platform, upload_id: str) -> StoredFile:
    body = await read_model(request, _CompleteBody, platform.settings.max_body_bytes)
    parts = [(part.part_number, part.etag) for part in body.parts]
    return await _storage(platform.files.complete_multipart, upload_id, parts,
                          max_size=platform.settings.max_upload_bytes)


async def _storage(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A storage call in a worker thread, its errors as HTTP errors."""
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except NotFound as exc:
        raise HTTPError(404, str(exc), "not_found") from None
    except InvalidParts as exc:
        raise HTTPError(400, str(exc), "invalid_parts") from None
    except FileTooLarge as exc:
        raise HTTPError(413, str(exc), "request_too_large") from None


def _platform(request: Request) -> Platform:
    return request.app.state.platform


def _url(platform: Platform, stored: StoredFile) -> str:
    return file_url(platform.public_url, stored.id, stored.file_name)


def _quoted(etag: str) -> str:
    return f'"{etag}"'


# Authorization
def _require_token(request: Request, platform: Platform) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not platform.signer.token_valid(token.strip(), time.time()):
        raise HTTPError(401, "A valid storage token is required: POST /storage/auth/token",
                        "unauthorized", {"www-authenticate": "Bearer"})


def _signed_upload_id(request: Request, platform: Platform) -> str:
    upload_id: str = request.path_params["upload_id"]
    if not platform.signer.verify(UPLOAD, upload_id, request.query_params.get("signature")):
        raise HTTPError(403, "The upload URL's signature is missing or wrong",
                        "invalid_signature")
    return upload_id


# What the request says about the file
def _file_headers(request: Request) -> tuple[str, str]:
    """Content type and file name of a raw upload, from its headers."""
    content_type = _content_type(request.headers.get("content-type"))
    name = request.headers.get("x-fal-file-name")
    return content_type, _file_name(_header_text(name) if name else None, content_type)


def _content_type(value: str | None) -> str:
    value = (value or "").strip()
    if len(value) <= 255 and _CONTENT_TYPE.fullmatch(value):
        return value
    return DEFAULT_CONTENT_TYPE


def _file_name(value: str | None, content_type: str) -> str:
    """A name safe in a URL path segment: the last segment of what was sent, printable,
    bounded; else ``file.<extension of the content type>``."""
    name = (value or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:200]
    if name in ("", ".", ".."):
        base_type = content_type.split(";", 1)[0].strip()
        return "file" + (mimetypes.guess_extension(base_type) or ".bin")
    return name


def _header_text(value: str) -> str:
    """Header values arrive decoded as latin-1; clients send UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _expires_at(request: Request, platform: Platform) -> float | None:
    """When the file expires: the lifecycle header's duration, else the server default."""
    default = platform.settings.default_file_ttl_seconds
    try:
        preference = requested_lifecycle(request.headers, UPLOAD_HEADERS)
    except InvalidLifecycle as exc:
        raise HTTPError(422, exc.detail) from None
    ttl = default if preference is None else preference.ttl_seconds(default)
    return None if ttl is None else time.time() + ttl


# Bodies
@asynccontextmanager
async def _spooled_body(request: Request, platform: Platform) -> AsyncIterator[Path]:
    """The request body in a staged file, removed afterwards unless the storage took it."""
    limit = platform.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    path = await spool(request.stream(), platform.files.staging_dir, limit)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


async def spool(chunks: AsyncIterable[bytes], directory: Path, limit: int) -> Path:
    """Write a body to a new file in ``directory``, in large writes done in a worker
    thread; 413 (and no file left) past ``limit`` bytes."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-spool-")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            buffer, size = bytearray(), 0
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                buffer += chunk
                if len(buffer) >= SPOOL_WRITE_BYTES:
                    await asyncio.to_thread(out.write, buffer)
                    buffer = bytearray()
            await asyncio.to_thread(out.write, buffer)
    except ClientDisconnect:
        path.unlink(missing_ok=True)
        raise HTTPError(400, "The client went away before the end of the body",
                        "client_disconnected") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _too_large(limit: int) -> HTTPError:
    return HTTPError(413, f"The upload is larger than the limit of {limit} bytes",
                     "request_too_large")


# Conditional and range requests
def _etag_listed(header: str | None, etag: str) -> bool:
    if not header:
        return False
    return any(item.strip() == "*" or normalize_etag(item) == etag
               for item in header.split(","))


def _requested_range(request: Request, stored: StoredFile) -> tuple[int, int] | None:
    """The one byte range asked for, as ``(start, stop)`` with ``stop`` exclusive; None for
    the whole file (no Range, one we ignore as RFC 9110 allows: malformed or several
    ranges, or an If-Range that no longer matches). 416 if it cannot be satisfied."""
    header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if header is None or (if_range is not None and if_range.strip() != _quoted(stored.etag)):
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    size = stored.size
    if not first:
        if not last:
            return None
        start, stop = max(0, size - int(last)), size
    else:
        start = int(first)
        if last and int(last) < start:
            return None
        stop = size if not last else min(int(last) + 1, size)
    if start >= stop:
        raise HTTPError(416, f"The range {header!r} is outside the file's {size} bytes",
                        "range_not_satisfiable", {"content-range": f"bytes */{size}"})
    return start, stop
