"""HMAC signatures for upload URLs and CDN tokens, with a per-server secret.

Upload URLs are used without an Authorization header (browsers PUT straight to them), so
they carry their own proof: a signature of the upload id. CDN tokens are short-lived
bearer tokens: ``<expiry unix time>.<signature of it>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

UPLOAD = "upload"
CDN_TOKEN = "cdn-token"


class Signer:
    def __init__(self, secret: bytes):
        self._secret = secret

    @staticmethod
    def initial_secret(legacy_path: Path) -> bytes:
        """The secret a store starts with: the one a data dir of an earlier release kept
        in a file (so its signed URLs stay valid), else a new random one."""
        if legacy_path.exists():
            return legacy_path.read_bytes().strip()
        return secrets.token_urlsafe(32).encode()

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

