"""API keys: ``Authorization: Key <id>:<secret>``, scopes, and who a caller is.

Secrets are random (192 bits) and stored only as SHA-256 hashes; a slow password hash buys
nothing for secrets nobody chose. The keyring holds every key in memory, so checking a key
costs no database read on the request path; changes go through it and the store together.
With a store shared by several gateways, the others' changes reach it by reading the keys
again: at once for a key it does not know (one made on another gateway a moment ago), and
every few seconds for revocations and limits (``refresh_forever``).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from openfal.store.base import KeyRecord, Store

log = logging.getLogger(__name__)

# With a shared store: how often the keys are read again, for changes made elsewhere.
REFRESH_SECONDS = 2.0
VERIFIED_HEADERS_KEPT = 4096  # headers whose secret was checked once (bounded memory)


class Scope(enum.StrEnum):
    ADMIN = "ADMIN"  # manage keys, see every request, runners, usage
    API = "API"  # run endpoints, see its own requests


class AuthError(Exception):
    """A credential that is missing, malformed, unknown or revoked (401)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key, or everyone when auth is off (key_id None, ADMIN)."""

    key_id: str | None
    scope: Scope
    max_concurrency: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope is Scope.ADMIN

    def can_see(self, owner_key_id: str | None) -> bool:
        """Whether this caller may see a request made by ``owner_key_id``."""
        return owner_key_id is None or self.is_admin or owner_key_id == self.key_id


EVERYONE = Principal(key_id=None, scope=Scope.ADMIN)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_authorization(header: str) -> tuple[str, str]:
    scheme, _, credentials = header.partition(" ")
    key_id, sep, secret = credentials.strip().partition(":")
    if scheme.lower() != "key" or not sep or not key_id or not secret:
        raise AuthError("expected 'Authorization: Key <key_id>:<key_secret>'")
    return key_id, secret


class Keyring:
    def __init__(self, store: Store, default_concurrency: int | None):
        self.store = store
        self.default_concurrency = default_concurrency
        self._keys: dict[str, KeyRecord] = {}
        self._verified: dict[str, str] = {}  # Authorization header -> the hash it matched
        # Called when a key is revoked: its live realtime sessions end.
        self._on_revoke: defaultdict[str, set[Callable[[], None]]] = defaultdict(set)
        # Reads and this keyring's own changes one at a time, so that a read begun before a
        # change was committed cannot undo it here.
        self._lock = asyncio.Lock()
        self._loaded_at = -1.0  # when the last read of the keys began (monotonic)

    async def load(self) -> None:
        """Read every key from the store (again): keys revoked elsewhere since the last
        read end their sessions here too."""
        async with self._lock:
            await self._load()

    async def _load(self) -> None:
        self._loaded_at = time.monotonic()
        keys = {key.id: key for key in await self.store.list_keys()}
        for key_id, key in keys.items():
            known = self._keys.get(key_id)
            if key.revoked_at is not None and known is not None and known.revoked_at is None:
                self._revoked(key_id)
        self._keys = keys

    async def look_up(self, key_id: str) -> None:
        """Before checking a key this keyring does not know: with a shared store, read the
        keys again (another gateway may have just made it). Callers that miss at once
        share one read; a read is only skipped if one began after the caller asked."""
        if key_id in self._keys or not self.store.shared:
            return
        asked = time.monotonic()
        async with self._lock:
            if self._loaded_at < asked:
                await self._load()

    async def refresh_forever(self, interval: float = REFRESH_SECONDS) -> None:
        """With a shared store: read the keys every ``interval`` seconds, so that what other
        gateways revoke or limit applies here too (a failed read is logged and retried)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.load()
            except Exception:  # a background loop: the next round may well succeed
                log.exception("reading the API keys failed; trying again")

    def active(self) -> list[KeyRecord]:
        return [key for key in self._keys.values() if key.revoked_at is None]

    def all(self) -> list[KeyRecord]:
        return list(self._keys.values())

    async def create(self, scope: Scope, name: str = "",
                     max_concurrency: int | None = None) -> tuple[KeyRecord, str]:
        """A new key, and the ``id:secret`` string shown to its owner once."""
        key_id, secret = str(uuid.uuid4()), secrets.token_urlsafe(24)
        record = KeyRecord(id=key_id, secret_hash=hash_secret(secret), scope=scope.value,
                           name=name, created_at=time.time(), max_concurrency=max_concurrency)
        async with self._lock:
            await self.store.add_key(record)
            self._keys[key_id] = record
        return record, f"{key_id}:{secret}"

    async def revoke(self, key_id: str) -> bool:
        await self.look_up(key_id)
        async with self._lock:
            key = self._keys.get(key_id)
            if key is None or key.revoked_at is not None:
                return False
            revoked_at = time.time()
            await self.store.revoke_key(key_id, revoked_at)
            key.revoked_at = revoked_at
        self._revoked(key_id)
        return True

    def _revoked(self, key_id: str) -> None:
        for callback in self._on_revoke.pop(key_id, set()):
            callback()

    def on_revoke(self, key_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the key is revoked; returns a function that cancels it."""
        self._on_revoke[key_id].add(callback)

        def cancel() -> None:
            callbacks = self._on_revoke.get(key_id)
            if callbacks is not None:
                callbacks.discard(callback)
                if not callbacks:
                    del self._on_revoke[key_id]
        return cancel

    async def set_concurrency(self, key_id: str, limit: int | None) -> bool:
        await self.look_up(key_id)
        async with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                return False
            await self.store.set_key_concurrency(key_id, limit)
            key.max_concurrency = limit
        return True

    def authenticate(self, header: str) -> Principal:
        key_id, secret = parse_authorization(header)
        key = self._keys.get(key_id)
        if key is None:
            raise AuthError("invalid or revoked API key")
        # A header already checked against this key's hash is not hashed again (a SHA-256
        # per request was a few % of a status poll); revocation is checked every time.
        if self._verified.get(header) != key.secret_hash:
            if not hmac.compare_digest(key.secret_hash, hash_secret(secret)):
                raise AuthError("invalid or revoked API key")
            if len(self._verified) >= VERIFIED_HEADERS_KEPT:
                self._verified.clear()
            self._verified[header] = key.secret_hash
        return self.principal(key_id)

    def principal(self, key_id: str) -> Principal:
        """The caller a key stands for (a token names its key), if the key is active."""
        key = self._keys.get(key_id)
        if key is None or key.revoked_at is not None:
            raise AuthError("invalid or revoked API key")
        limit = key.max_concurrency if key.max_concurrency is not None else (
            self.default_concurrency)
        return Principal(key_id=key.id, scope=Scope(key.scope), max_concurrency=limit)
