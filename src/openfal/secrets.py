"""App secrets: named values (an ``HF_TOKEN``, say) that runners get as environment variables.

An ADMIN sets them through the gateway (``openfal secrets``, ``/api/secrets``). Each is
sealed with AES-GCM (a fresh 12-byte nonce, the secret's name as associated data, so a value
cannot be passed off under another name) and kept in the store's ``secrets`` table as
``app-secret/<NAME>``: an envelope of nonce, ciphertext and the time it was set. No route
answers a value. Workers get the sealed envelopes through the work API and open them with
their own copy of the key, just before they start a runner.

The key: ``OPENFAL_SECRETS_KEY`` (32 bytes, base64), which every gateway and ``openfal
worker`` of a many-host setup must share; without it, the data dir's ``secrets.key``, made on
first start (enough when one ``openfal serve`` runs the runners).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from openfal.errors import ConfigError
from openfal.net.atomic import write_atomic

KEY_VARIABLE = "OPENFAL_SECRETS_KEY"
KEY_FILE = "secrets.key"
KEY_BYTES = 32
NONCE_BYTES = 12
STORE_PREFIX = "app-secret/"  # their names in the store's secrets table
# Characters, so that the rule is one a schema can state; at most 64 KiB in UTF-8, half of
# what Linux allows one environment variable.
MAX_VALUE_CHARS = 16 * 1024
VALUE_PATTERN = "^[^\\x00]*$"  # an environment variable cannot hold a NUL
NAME_RULE = ("must be an environment variable name: A-Z, 0-9 and _, not starting with a "
             "digit, at most 128 characters")
NAME_PATTERN = "^[A-Z_][A-Z0-9_]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
_KEY_PROBLEM = (f"cannot open the app's secrets: {KEY_VARIABLE} is missing or wrong on this "
                f"worker (it must be the gateway's)")


class SecretsUnavailable(Exception):
    """An app's secrets cannot be given to its runner (one line: why)."""


def is_valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def updated_at(sealed: bytes) -> float:
    """When a sealed secret was set (readable without the key)."""
    return msgpack.unpackb(sealed)["updated_at"]


class SecretBox:
    """Seals and opens secret values with the platform's 32-byte key."""

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    @classmethod
    def from_environment(cls, data_dir: Path) -> SecretBox:
        """``OPENFAL_SECRETS_KEY``, else the data dir's key file (made now if missing)."""
        return cls.from_variable() or cls(_key_file(data_dir / KEY_FILE))

    @classmethod
    def from_variable(cls) -> SecretBox | None:
        """``OPENFAL_SECRETS_KEY``, if set (runners never inherit it: worker/runners.py)."""
        encoded = os.environ.get(KEY_VARIABLE)
        if encoded is None:
            return None
        key = _decoded_key(encoded)
        if key is None:
            raise ConfigError(f"{KEY_VARIABLE} must be {KEY_BYTES} bytes in base64; make one "
                              f"with: openssl rand -base64 {KEY_BYTES}")
        return cls(key)

    def seal(self, name: str, value: str, now: float) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._aead.encrypt(nonce, value.encode(), name.encode())
        return msgpack.packb({"nonce": nonce, "ciphertext": ciphertext, "updated_at": now})

    def open(self, name: str, sealed: bytes) -> str:
        """The value sealed under ``name``; ``InvalidTag`` if this is not the key that sealed
        it (or the envelope was changed)."""
        envelope = msgpack.unpackb(sealed)
        return self._aead.decrypt(envelope["nonce"], envelope["ciphertext"],
                                  name.encode()).decode()


def runner_secrets(sealed: dict[str, bytes], names: list[str] | None,
                   box: SecretBox | None) -> dict[str, str]:
    """The environment variables a runner of an app gets: the secrets it names (every one
    when it names none), opened from what the work API gave (``sealed``, by name). A name
    not set, or a key that cannot open them, fails the runner's setup, in one line."""
    wanted = sorted(sealed) if names is None else names
    missing = [name for name in wanted if name not in sealed]
    if missing:
        raise SecretsUnavailable(f"the app needs secrets that are not set: {', '.join(missing)} "
                                f"(openfal secrets set NAME)")
    if not wanted:
        return {}
    if box is None:
        raise SecretsUnavailable(_KEY_PROBLEM)
    try:
        return {name: box.open(name, sealed[name]) for name in wanted}
    except InvalidTag:
        raise SecretsUnavailable(_KEY_PROBLEM) from None


def _decoded_key(encoded: str) -> bytes | None:
    """32 bytes from base64, standard or URL-safe, padded or not; None if it is not that."""
    standard = encoded.strip().replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except binascii.Error:
        return None
    return key if len(key) == KEY_BYTES else None


def _key_file(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, base64.b64encode(os.urandom(KEY_BYTES)) + b"\n", mode=0o600)
    key = _decoded_key(path.read_text())
    if key is None:
        raise ConfigError(f"{path} does not hold a {KEY_BYTES}-byte key in base64")
    return key
