"""Route access levels. Every route in the table names one, so nothing is open by accident.

PUBLIC   anyone (health, JWKS, file downloads, signed uploads)
CALLER   a key if one is sent (a bad one is 401); the handler decides what an anonymous
         caller may do (public apps, requests made anonymously)
KEY      any valid key
ADMIN    an ADMIN key
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from openfal.auth.keys import EVERYONE, AuthError, Principal, parse_authorization
from openfal.gateway.http import HTTPError
from openfal.server import Platform

Handler = Callable[[Request], Awaitable[Response]]


class Access(enum.Enum):
    PUBLIC = "public"
    CALLER = "caller"
    KEY = "key"
    ADMIN = "admin"


def unauthorized(detail: str) -> HTTPError:
    return HTTPError(401, detail, "unauthorized", {"www-authenticate": "Key"})


async def identify(connection: HTTPConnection) -> Principal | None:
    """The caller, from its ``Authorization`` header; None when it sent none."""
    platform: Platform = connection.app.state.platform
    if not platform.settings.auth:
        return EVERYONE
    header = connection.headers.get("authorization")
    if header is None:
        return None
    try:
        key_id, _ = parse_authorization(header)
        await platform.keyring.look_up(key_id)  # made on another gateway just now?
        return platform.keyring.authenticate(header)
    except AuthError as exc:
        raise unauthorized(str(exc)) from None


PRINCIPAL = "openfal.principal"  # the scope entry the guard leaves the caller in


def principal(request: Request) -> Principal | None:
    return request.scope[PRINCIPAL]


def guard(handler: Handler, access: Access) -> Handler:
    if access is Access.PUBLIC:
        return handler

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        caller = await identify(request)
        if access is not Access.CALLER and caller is None:
            raise unauthorized("this route needs an API key: 'Authorization: Key <id>:<secret>'")
        if access is Access.ADMIN and caller is not None and not caller.is_admin:
            raise HTTPError(403, "this route needs an ADMIN key", "forbidden")
        request.scope[PRINCIPAL] = caller
        return await handler(request)

    return guarded


def require_key_for_app(request: Request, app_public: bool) -> None:
    """Calls to an app need a key unless the app is public."""
    if principal(request) is None and not app_public:
        raise unauthorized("calling this app needs an API key")


def ensure_visible(request: Request, owner_key_id: str | None) -> None:
    """Another key's request is, to this caller, a request that does not exist."""
    caller = principal(request)
    visible = caller.can_see(owner_key_id) if caller is not None else owner_key_id is None
    if not visible:
        raise HTTPError(404, "Request not found", "request_not_found")
