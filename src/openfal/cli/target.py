"""The server a client command talks to, the key it sends and the certificates it trusts.

The server: ``--server`` (``OPENFAL_SERVER``), else the one running on the data dir
(``--data-dir``, ``OPENFAL_DATA_DIR``, default ``~/.openfal``) as its ``server.json`` says,
else http://127.0.0.1:8000. The key: see :mod:`openfal.auth.credentials`. An https server is
verified against the usual CAs (or ``SSL_CERT_FILE``) plus the data dir's local CA, the one
``openfal serve --tls`` signs its certificate with.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from openfal.auth.credentials import KEY_VARIABLE, FoundKey, find_key
from openfal.net.runtime import running_server
from openfal.net.tls import tls_files

FALLBACK_SERVER = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Target:
    url: str
    data_dir: Path
    key: FoundKey | None

    @classmethod
    def find(cls, server: str | None, data_dir: Path) -> Target:
        data_dir = data_dir.expanduser()
        if server is None:
            running = running_server(data_dir)
            server = running.reachable_url if running is not None else FALLBACK_SERVER
        return cls(url=server.rstrip("/"), data_dir=data_dir, key=find_key(data_dir))

    def verify(self) -> ssl.SSLContext | bool:
        if not self.url.startswith("https:"):
            return True
        context = httpx.create_ssl_context()  # honours SSL_CERT_FILE
        local_ca = tls_files(self.data_dir).ca_cert
        if local_ca.is_file():
            context.load_verify_locations(local_ca)
        return context

    def key_hint(self) -> str:
        """Which key was sent, and how to send another."""
        if self.key is None:
            return (f"no key was sent: set {KEY_VARIABLE}, or point --data-dir at the "
                    f"server's data dir (its admin.key)")
        return (f"the key sent came from {self.key.source}; set {KEY_VARIABLE} to send "
                f"another")

    def untrusted_hint(self) -> str:
        return ("pass the server's data dir (--data-dir, whose local CA is then trusted), "
                "or set SSL_CERT_FILE to a bundle with its CA "
                "(eval \"$(openfal env --data-dir DIR)\" does)")
