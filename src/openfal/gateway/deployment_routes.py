"""Admin routes: apps deployed to a running server (``openfal deploy``, ``openfal apps``).

    POST   /api/deployments?ref=app.py::Class[&name=owner/app]   body: the bundle (tar.gz)
    GET    /api/deployments                                      every deployed app
    GET    /api/deployments/{owner}/{name}                       its revisions
    POST   /api/deployments/{owner}/{name}/rollback  {revision}  make a revision current
    DELETE /api/deployments/{owner}/{name}                       stop serving it

A deploy is checked before it is kept: the bundle unpacks, the app loads, and its endpoints
are not another app's. The revision is then stored (every gateway and worker reads it from
there) and served here at once (worker/deployments.py).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from openfal.app.bundle import MAX_BUNDLE_BYTES, BundleError, unpack
from openfal.app.registry import RESERVED_OWNERS, ServedApp
from openfal.errors import ConfigError
from openfal.gateway.http import HTTPError, field_error, json_response, read_body, read_model
from openfal.gateway.urls import base_url
from openfal.server import Platform
from openfal.store.base import AppRevision

_REF = re.compile(r"^(?!/)(?!.*\.\.)[\w./-]+\.py::[A-Za-z_]\w*$")
_SEGMENT = r"[a-z0-9][a-z0-9._-]{0,99}"
_APP_ID = re.compile(rf"^{_SEGMENT}/{_SEGMENT}$")


class Rollback(BaseModel):
    revision: int = Field(ge=1)


def _platform(request: Request) -> Platform:
    return request.app.state.platform


def _revision(revision: AppRevision, request: Request, served: ServedApp | None = None
              ) -> dict:
    described = dataclasses.asdict(revision)
    if served is not None:
        described["endpoints"] = [f"{base_url(request)}/{endpoint_id}"
                                  for endpoint_id in served.endpoint_ids()]
    return described


async def deploy(request: Request) -> Response:
    platform = _platform(request)
    ref = request.query_params.get("ref", "")
    if not _REF.match(ref):
        raise field_error(["query", "ref"], "must be the app's file and class inside the "
                                            "bundle, like 'app.py::MyApp'")
    name = request.query_params.get("name")
    if name is not None and (not _APP_ID.match(name)
                             or name.split("/")[0] in RESERVED_OWNERS):
        raise field_error(["query", "name"], "must be 'owner/app' (lowercase letters, "
                                             "digits, '.', '_', '-'), not a reserved owner")
    bundle = await read_body(request, MAX_BUNDLE_BYTES)
    served = await _checked_app(platform, bundle, ref, name)
    revision = await platform.store.add_app_revision(served.app_id, ref, bundle, time.time())
    await platform.deployments.sync()
    return json_response(_revision(revision, request, served), 201)


async def _checked_app(platform: Platform, bundle: bytes, ref: str, name: str | None
                       ) -> ServedApp:
    """The app the bundle holds, loaded here as every gateway and worker will load it."""
    staging = platform.deployments.cache_dir / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=staging)) / "app"
    try:
        unpack(bundle, folder)
        served = await platform.deployments.load(folder, ref, name)
    except (BundleError, ConfigError) as exc:
        raise HTTPError(422, str(exc), "invalid_app") from None
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    taken = platform.registry.taken_by(served)
    if taken is not None and (taken[1].revision is None or taken[1].app_id != served.app_id):
        raise HTTPError(409, f"endpoint {taken[0]!r} is already served by another app "
                             f"({taken[1].app_id})", "endpoint_taken")
    return served


async def list_deployments(request: Request) -> Response:
    current = await _platform(request).store.current_app_revisions()
    return json_response({"apps": [_revision(revision, request)
                                   for _, revision in sorted(current.items())]})


def _app_id(request: Request) -> str:
    return f"{request.path_params['owner']}/{request.path_params['name']}"


def _not_deployed(app_id: str) -> HTTPError:
    return HTTPError(404, f"No app {app_id!r} is deployed", "app_not_found")


async def revisions(request: Request) -> Response:
    platform = _platform(request)
    app_id = _app_id(request)
    found = await platform.store.app_revisions(app_id)
    if not found:
        raise _not_deployed(app_id)
    current = (await platform.store.current_app_revisions())[app_id].revision
    return json_response({"app_id": app_id, "current": current,
                          "revisions": [_revision(r, request) for r in found]})


async def rollback(request: Request) -> Response:
    platform = _platform(request)
    app_id = _app_id(request)
    wanted = await read_model(request, Rollback, 1024)
    revision = await platform.store.set_current_app_revision(app_id, wanted.revision)
    if revision is None:
        if not await platform.store.app_revisions(app_id):
            raise _not_deployed(app_id)
        raise field_error(["body", "revision"], f"{app_id} has no revision {wanted.revision}")
    await platform.deployments.sync()
    return json_response(_revision(revision, request))


async def delete(request: Request) -> Response:
    platform = _platform(request)
    app_id = _app_id(request)
    if not await platform.store.delete_app(app_id):
        raise _not_deployed(app_id)
    await platform.deployments.sync()
    return json_response({"app_id": app_id, "deleted": True})
