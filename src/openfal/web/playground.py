"""The playground's routes: the page at ``/`` and its static files under ``/_playground/``.

The page is a client of the server's own public APIs (``/v1/models``, the endpoints'
OpenAPI documents, the queue, storage uploads, keys and usage); it needs no route of its
own beyond these two. Files are listed once, so only what ships under ``static/`` is served.
"""

from __future__ import annotations

import functools
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from openfal.gateway.http import HTTPError

STATIC = Path(__file__).parent / "static"
ASSET_PREFIX = "/_playground"
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# Results and uploads may live on other hosts (an S3 bucket, --public-url): media and
# fetches may go anywhere; scripts, styles and frames only from here.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src * data: blob:; "
        "media-src * data: blob:; connect-src *; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'none'")
_HEADERS = {"content-security-policy": _CSP, "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer", "cache-control": "no-cache"}


@functools.cache
def _files() -> dict[str, Path]:
    """Every shipped file by its path under ``static/``."""
    return {path.relative_to(STATIC).as_posix(): path
            for path in STATIC.rglob("*") if path.is_file() and path.suffix in _MEDIA_TYPES}


def _file_response(name: str) -> Response:
    path = _files().get(name)
    if path is None:
        raise HTTPError(404, "Not found", "not_found")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_HEADERS)


async def index(request: Request) -> Response:
    return _file_response("index.html")


async def asset(request: Request) -> Response:
    return _file_response(request.path_params["file_path"])


ROUTES = [("/", index), (ASSET_PREFIX + "/{file_path:path}", asset)]
