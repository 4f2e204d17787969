"""HMAC signatures for upload URLs and CDN tokens, with a per-server secret.

Upload URLs are used without an Authorization header (browsers PUT straight to them), so
they carry their own proof: a signature of the upload id. CDN tokens are short-lived
bearer tokens: ``<expiry unix time>.<signature of it>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

UPLOAD = "upload"
CDN_TOKEN = "cdn-token"


class Signer:
    def __init__(self, secret: bytes):
        self._secret = secret

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """The secret kept in ``path``, created (random, mode 0600) on first use."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _create_secret(path)
        return cls(path.read_bytes().strip())

    def derived_key(self, purpose: str) -> bytes:
        """A key for another signing scheme (e.g. JWTs), bound to ``purpose``."""
        return hmac.new(self._secret, f"key:{purpose}".encode(), hashlib.sha256).digest()

    def sign(self, purpose: str, message: str) -> str:
        mac = hmac.new(self._secret, f"{purpose}:{message}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    def verify(self, purpose: str, message: str, signature: str | None) -> bool:
        if not signature:
            return False
        return hmac.compare_digest(self.sign(purpose, message).encode(), signature.encode())

    def issue_token(self, now: float, ttl_seconds: float) -> tuple[str, int]:
        """A CDN token valid for ``ttl_seconds``, and when it expires (Unix seconds)."""
        expires = int(now + ttl_seconds)
        return f"{expires}.{self.sign(CDN_TOKEN, str(expires))}", expires

    def token_valid(self, token: str, now: float) -> bool:
        expires, _, signature = token.partition(".")
        return (expires.isascii() and expires.isdigit() and int(expires) > now
                and self.verify(CDN_TOKEN, expires, signature))


def _create_secret(path: Path) -> None:
    """Write a new secret under a temporary name, then link it into place: if another
    process got there first, its secret wins and both use it."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    try:
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink()
