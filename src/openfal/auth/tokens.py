"""Short-lived JWTs for realtime sessions (``POST /tokens/``, then ``?fal_jwt_token=``).

Browser apps cannot hold an API key, so a backend mints a token that names the apps it is
good for and expires soon (the clients ask for 120 s). Tokens are HS256 JWTs signed with a
key derived from the server's secret. A token names the key that minted it (``sub``): its
sessions count against that key's limits and usage, and end when the key is revoked.
"""

from __future__ import annotations

import time

import jwt

from openfal.files.signing import Signer

_PURPOSE = "realtime-jwt"
_ALGORITHM = "HS256"
MAX_TTL_SECONDS = 24 * 3600


class TokenError(Exception):
    pass


def mint(signer: Signer, allowed_apps: list[str], ttl_seconds: float,
         key_id: str | None) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"iat": now, "exp": now + int(ttl_seconds),
                                 "allowed_apps": allowed_apps}
    if key_id is not None:
        claims["sub"] = key_id
    return jwt.encode(claims, signer.derived_key(_PURPOSE), algorithm=_ALGORITHM)


def verify(signer: Signer, token: str, app_alias: str) -> str | None:
    """The id of the key that minted ``token`` (None when keys are off); raise
    :class:`TokenError` unless it is valid now and allows ``app_alias``."""
    try:
        claims = jwt.decode(token, signer.derived_key(_PURPOSE), algorithms=[_ALGORITHM],
                            options={"require": ["exp", "allowed_apps"]})
    except jwt.PyJWTError as exc:
        raise TokenError(str(exc)) from None
    if app_alias not in claims["allowed_apps"]:
        raise TokenError(f"the token is not valid for {app_alias!r}")
    return claims.get("sub")
