"""A real PostgreSQL server for tests: one per test session, a fresh database per test.

Debian's server binaries (``/usr/lib/postgresql/<version>/bin``) in a temporary folder:
data, log and unix socket all inside it, ``fsync=off`` (a test database need not survive a
crash), listening on a free loopback port. initdb refuses to run as root, so as root the
server runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEBIAN_PG = Path("/usr/lib/postgresql")
SERVICE_USER = "postgres"
_TIMEOUT = 60.0


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> Path:
    """The newest Debian PostgreSQL server's ``bin`` folder."""
    found = sorted((p for p in DEBIAN_PG.glob("*/bin") if (p / "initdb").exists()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not found:
        raise PostgresUnavailable(f"no PostgreSQL server under {DEBIAN_PG}/*/bin "
                                  "(apt-get install postgresql)")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @staticmethod
    def _as_service_user() -> list[str]:
        return ["runuser", "-u", SERVICE_USER, "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as_service_user(), *args], cwd=self.root,
                              capture_output=True, text=True, timeout=_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}):"
                               f" {done.stderr.strip() or done.stdout.strip()}")

    @classmethod
    def start(cls, durable: bool = False) -> PostgresServer:
        """``durable``: commits wait for the disk, as in production (benchmarks); tests
        need not."""
        root = Path(tempfile.mkdtemp(prefix="openfal-pg-"))
        server = cls(find_bindir(), root, _free_port())
        try:
            (root / "sock").mkdir()
            if os.geteuid() == 0:
                shutil.chown(root, SERVICE_USER, SERVICE_USER)
                shutil.chown(root / "sock", SERVICE_USER, SERVICE_USER)
            server._run(str(server.bindir / "initdb"), "-D", str(server.data), "-U", "postgres",
                        "-A", "trust", "--no-sync")
            options = (f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root / 'sock'}"
                       " -c max_connections=300")
            if not durable:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            server._run(str(server.bindir / "pg_ctl"), "-D", str(server.data),
                        "-l", str(root / "log"), "-w", "-o", options, "start")
        except BaseException:
            server.stop()
            raise
        return server

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` (as the superuser); what it printed, unaligned."""
        done = subprocess.run([str(self.bindir / "psql"), "-X", "-q", "-A", "-t",
                               "-v", "ON_ERROR_STOP=1", "-c", sql, self.url(database)],
                              check=True, capture_output=True, text=True, timeout=_TIMEOUT)
        return done.stdout.strip()

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t_{secrets.token_hex(6)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown, then SIGKILL if it hangs) and remove its files."""
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                          "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                self._kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)  # its backends exit when they see it gone
