"""Ed25519 keys that sign webhook deliveries, and the JWKS receivers verify them with.

The hosted platform's scheme: the signature covers the UTF-8 of
``request_id + "\\n" + user_id + "\\n" + timestamp + "\\n" + sha256_hex(body)`` and travels
hex-encoded in ``X-Fal-Webhook-Signature``; receivers try every key of the JWKS.

The keys live in the store (the secret ``webhook-signing-keys``: the list of keys, oldest
first, each with its private key; the last one signs), so every gateway of a store signs with
the same key. Rotation appends a new key and gives the previous ones a ``retire_at`` time
until which the JWKS still publishes them, so receivers holding a delivery signed just before
the rotation, or a JWKS cached before it, can still verify. Release 0.1 kept the keys in
``<data-dir>/webhook-keys/``; a store without keys takes those on its first start.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

if TYPE_CHECKING:
    from openfal.store.base import Store

SECRET_NAME = "webhook-signing-keys"
LEGACY_MANIFEST = "keys.json"
DEFAULT_RETIRE_AFTER_SECONDS = 48 * 3600.0
RELOAD_SECONDS = 5.0  # how stale a gateway's copy of the keys may get


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
    """The signing keys, kept in the store as one secret: every gateway of a store signs
    with the same current key and publishes the same JWKS. Each gateway rereads the secret
    when its copy is older than ``reload_seconds``, so a rotation made through another
    gateway is signed with from then on."""

    def __init__(self, store: Store, entries: list[dict[str, Any]], raw: bytes,
                 reload_seconds: float = RELOAD_SECONDS):
        self.store = store
        self.reload_seconds = reload_seconds
        self._raw = raw
        self._keys = [_key_of(entry) for entry in entries]
        self._loaded_at = time.monotonic()

    @classmethod
    async def open(cls, store: Store, legacy_dir: Path | None = None) -> KeyRing:
        """The store's key ring; the first time, the keys of ``legacy_dir`` (where a data
        dir of an earlier release kept them, so receivers keep verifying), else a new key."""
        raw = await store.get_secret(SECRET_NAME)
        if raw is None:
            entries = _legacy_entries(legacy_dir) or [_new_entry(time.time())]
            raw = await store.put_secret_once(SECRET_NAME, _encode(entries))
        return cls(store, _decode(raw), raw)

    async def current(self) -> SigningKey:
        """The key that signs deliveries now: the newest."""
        return (await self._fresh())[-1]

    async def jwks(self, now: float) -> dict[str, Any]:
        """The public keys receivers may see signatures from, newest first."""
        keys = [key for key in reversed(await self._fresh())
                if key.retire_at is None or key.retire_at > now]
        return {"keys": [key.jwk() for key in keys]}

    async def rotate(self, retire_after: float = DEFAULT_RETIRE_AFTER_SECONDS) -> SigningKey:
        """Add a new signing key; earlier keys stay published for ``retire_after`` seconds
        (those past their time are dropped). Safe against a rotation through another gateway
        at the same moment: the swap is made only on the value it was computed from."""
        while True:
            raw = await self.store.get_secret(SECRET_NAME)
            assert raw is not None  # open() stored it
            entries = _rotated(_decode(raw), time.time(), retire_after)
            new_raw = _encode(entries)
            if await self.store.replace_secret(SECRET_NAME, raw, new_raw):
                self._use(new_raw)
                return self._keys[-1]

    async def _fresh(self) -> list[SigningKey]:
        if time.monotonic() - self._loaded_at >= self.reload_seconds:
            raw = await self.store.get_secret(SECRET_NAME)
            if raw is not None:
                self._use(raw)
        return self._keys

    def _use(self, raw: bytes) -> None:
        if raw != self._raw:
            self._keys = [_key_of(entry) for entry in _decode(raw)]
            self._raw = raw
        self._loaded_at = time.monotonic()


def _new_entry(now: float) -> dict[str, Any]:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return {"kid": _thumbprint(private), "created_at": now, "retire_at": None,
            "private_pem": pem.decode()}


def _rotated(entries: list[dict[str, Any]], now: float,
             retire_after: float) -> list[dict[str, Any]]:
    """The keys after a rotation at ``now``: the current one retires ``retire_after`` from
    now, those already retired are dropped, a new one is appended (it signs)."""
    kept = []
    for entry in entries:
        retire_at = entry["retire_at"] if entry["retire_at"] is not None else now + retire_after
        if retire_at > now:
            kept.append({**entry, "retire_at": retire_at})
    return [*kept, _new_entry(now)]


def _key_of(entry: dict[str, Any]) -> SigningKey:
    private = serialization.load_pem_private_key(entry["private_pem"].encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return SigningKey(entry["kid"], private, entry["retire_at"])


def _encode(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"keys": entries}).encode()


def _decode(raw: bytes) -> list[dict[str, Any]]:
    return json.loads(raw)["keys"]


def _legacy_entries(directory: Path | None) -> list[dict[str, Any]]:
    """The keys a data dir of release 0.1 kept in files: ``keys.json`` (oldest first) and
    one ``<kid>.pem`` each. Those past their retirement are left out."""
    if directory is None or not (directory / LEGACY_MANIFEST).is_file():
        return []
    entries = []
    for entry in json.loads((directory / LEGACY_MANIFEST).read_text())["keys"]:
        if entry["retire_at"] is not None and entry["retire_at"] <= time.time():
            continue
        pem = (directory / f"{entry['kid']}.pem").read_text()
        entries.append({**entry, "private_pem": pem})
    return entries


def _thumbprint(private: Ed25519PrivateKey) -> str:
    """The RFC 7638 thumbprint of the public key: a key id that names the key itself."""
    x = SigningKey("", private).public_x
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
