"""Ed25519 keys that sign webhook deliveries, and the JWKS receivers verify them with.

The hosted platform's scheme: the signature covers the UTF-8 of
``request_id + "\\n" + user_id + "\\n" + timestamp + "\\n" + sha256_hex(body)`` and travels
hex-encoded in ``X-Fal-Webhook-Signature``; receivers try every key of the JWKS.

Keys live in ``<data-dir>/webhook-keys/``: one ``<kid>.pem`` private key per key (0600) and
``keys.json``, the list of keys, oldest first; the last one signs. Rotation appends a new
key and gives the previous ones a ``retire_at`` time until which the JWKS still publishes
them, so receivers holding a delivery signed just before the rotation, or a JWKS cached
before it, can still verify. A running server notices a rotation made by another process
(``openfal webhooks rotate-key``) because ``keys.json`` changes.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openfal.net.atomic import write_atomic

MANIFEST = "keys.json"
DEFAULT_RETIRE_AFTER_SECONDS = 48 * 3600.0


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    retire_at: float | None = None

    @property
    def public_x(self) -> str:
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                     serialization.PublicFormat.Raw)
        return _b64url(raw)

    def jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "x": self.public_x, "kid": self.kid,
                "use": "sig", "alg": "EdDSA"}


def signature_message(request_id: str, user_id: str, timestamp: int, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


def signed_headers(key: SigningKey, request_id: str, user_id: str, timestamp: int,
                   body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt, signed now with ``key``."""
    signature = key.private.sign(signature_message(request_id, user_id, timestamp, body))
    return {"content-type": "application/json",
            "x-fal-webhook-request-id": request_id,
            "x-fal-webhook-user-id": user_id,
            "x-fal-webhook-timestamp": str(timestamp),
            "x-fal-webhook-signature": signature.hex()}


class KeyRing:
    """The signing keys in one directory, reloaded whenever ``keys.json`` changes."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._keys: list[SigningKey] = []
        self._seen: tuple[int, int] | None = None

    @classmethod
    def open(cls, directory: Path) -> KeyRing:
        """The key ring in ``directory``, with a first key created if there is none."""
        ring = cls(directory)
        with ring._locked():
            if not ring._manifest_path.exists():
                ring._add_key(time.time(), retire_after=0.0)  # no earlier key to retire
        return ring

    def current(self) -> SigningKey:
        """The key that signs deliveries now: the newest."""
        return self._loaded()[-1]

    def jwks(self, now: float) -> dict[str, Any]:
        """The public keys receivers may see signatures from, newest first."""
        keys = [key for key in reversed(self._loaded())
                if key.retire_at is None or key.retire_at > now]
        return {"keys": [key.jwk() for key in keys]}

    def rotate(self, retire_after: float = DEFAULT_RETIRE_AFTER_SECONDS) -> SigningKey:
        """Add a new signing key; earlier keys stay published for ``retire_after`` seconds."""
        with self._locked():
            return self._add_key(time.time(), retire_after)

    # Files
    @property
    def _manifest_path(self) -> Path:
        return self.directory / MANIFEST

    @contextmanager
    def _locked(self, shared: bool = False) -> Iterator[None]:
        """Serialise key changes (a starting server, ``rotate-key``) against each other
        and against readers, which must never see a key file removed under them."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with (self.directory / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield

    def _add_key(self, now: float, retire_after: float) -> SigningKey:
        entries = self._read_manifest()
        for entry in entries:
            if entry["retire_at"] is None:
                entry["retire_at"] = now + retire_after
        expired = [e for e in entries if e["retire_at"] <= now]
        entries = [e for e in entries if e["retire_at"] > now]
        private = Ed25519PrivateKey.generate()
        kid = _thumbprint(private)
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        write_atomic(self.directory / f"{kid}.pem", pem, mode=0o600)
        entries.append({"kid": kid, "created_at": now, "retire_at": None})
        write_atomic(self._manifest_path, json.dumps({"keys": entries}, indent=2).encode())
        for entry in expired:
            (self.directory / f"{entry['kid']}.pem").unlink(missing_ok=True)
        return SigningKey(kid, private)

    def _read_manifest(self) -> list[dict[str, Any]]:
        if not self._manifest_path.exists():
            return []
        return json.loads(self._manifest_path.read_text())["keys"]

    def _loaded(self) -> list[SigningKey]:
        if self._version() != self._seen:
            with self._locked(shared=True):
                self._keys = [self._load(entry) for entry in self._read_manifest()]
                self._seen = self._version()
        return self._keys

    def _version(self) -> tuple[int, int]:
        """Changes whenever ``keys.json`` is replaced (each write is a new file)."""
        stat = self._manifest_path.stat()
        return stat.st_mtime_ns, stat.st_ino

    def _load(self, entry: dict[str, Any]) -> SigningKey:
        pem = (self.directory / f"{entry['kid']}.pem").read_bytes()
        private = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(private, Ed25519PrivateKey)
        return SigningKey(entry["kid"], private, entry["retire_at"])


def _thumbprint(private: Ed25519PrivateKey) -> str:
    """The RFC 7638 thumbprint of the public key: a key id that names the key itself."""
    x = SigningKey("", private).public_x
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
