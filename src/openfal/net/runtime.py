"""``<data-dir>/server.json``: how to reach the server running on a data dir.

Written (atomically) once the server is ready and removed when it stops cleanly, so tools
such as ``openfal env`` need only the data dir. After a crash the file stays behind; its
``pid`` tells a reader that nobody is serving any more. Example::

    {"url": "https://127.0.0.1:8000", "scheme": "https", "host": "127.0.0.1", "port": 8000,
     "proxy_url": "http://127.0.0.1:8001", "ca_file": ".../tls/ca.pem",
     "bundle_file": ".../tls/bundle.pem", "pid": 4242}

``proxy_url``, ``ca_file`` and ``bundle_file`` are null without ``--tls``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from openfal.net.atomic import write_atomic
from openfal.net.hosts import reachable_host
from openfal.net.tls import TLSFiles


@dataclass(frozen=True)
class RuntimeInfo:
    url: str
    scheme: str
    host: str
    port: int
    pid: int
    proxy_url: str | None = None
    ca_file: str | None = None
    bundle_file: str | None = None

    @classmethod
    def describe(cls, url: str, proxy_url: str | None, tls: TLSFiles | None) -> RuntimeInfo:
        """This process, listening on ``url``."""
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        return cls(url=url, scheme=parts.scheme, host=parts.hostname, port=parts.port,
                   pid=os.getpid(), proxy_url=proxy_url,
                   ca_file=str(tls.ca_cert) if tls else None,
                   bundle_file=str(tls.bundle) if tls else None)

    @property
    def reachable_url(self) -> str:
        """The URL a client on this machine uses (``url`` may name an any-address)."""
        host = reachable_host(self.host)
        return f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

    def is_alive(self) -> bool:
        """Whether the process that wrote this still exists."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, but someone else's
            pass
        return True


def runtime_path(data_dir: Path) -> Path:
    return data_dir / "server.json"


def load_runtime(data_dir: Path) -> RuntimeInfo | None:
    """What ``server.json`` says, or None when there is none."""
    try:
        data = json.loads(runtime_path(data_dir).read_text())
    except FileNotFoundError:
        return None
    return RuntimeInfo(**data)


def running_server(data_dir: Path) -> RuntimeInfo | None:
    """The server serving on ``data_dir`` now; None when none is, or ``server.json`` cannot
    be read (a client then falls back to its defaults)."""
    try:
        info = load_runtime(data_dir)
    except (OSError, ValueError, TypeError):
        return None
    return info if info is not None and info.is_alive() else None


class RuntimeFile:
    """A platform service: writes ``server.json`` when started, removes it when stopped."""

    def __init__(self, data_dir: Path, info: RuntimeInfo):
        self.path = runtime_path(data_dir)
        self.info = info

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(dataclasses.asdict(self.info), indent=2).encode())

    async def stop(self) -> None:
        """Remove the file unless another server has taken the data dir over since."""
        if load_runtime(self.path.parent) == self.info:
            self.path.unlink()
