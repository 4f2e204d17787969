"""Running an openfal server as a separate process, for tests and benchmarks.

The server runs ``python -m openfal serve`` in its own process group with a fresh data dir;
``start()`` returns once it says where it listens. Every process it starts carries a tag in
its environment, so runners left behind by a ``kill -9`` can be found and stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx

START_TIMEOUT = 60.0
TAG_VARIABLE = "OPENFAL_TEST_TAG"
LISTENING = " listening on "


class ServerProcess:
    """``openfal serve`` in its own process group, on a free port, with its own data dir.

    ``command`` runs something else instead (a benchmark's baseline server): it must print
    the same ``openfal listening on URL`` line when ready, or ``ready_text`` (a worker).
    """

    def __init__(self, data_dir: Path, args: list[str], port: int = 0,
                 command: list[str] | None = None, name: str = "openfal",
                 ready_text: str = LISTENING, env: dict[str, str] | None = None):
        self.name = name
        self.env = env or {}  # on top of this process's environment
        self.ready_text = ready_text
        self.data_dir = data_dir
        self.args = args
        self.port = port
        self.command = command
        self.tag = uuid.uuid4().hex
        self.url = ""
        self.output: list[str] = []
        self.headers: dict[str, str] = {}  # for callers to send with every request
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.reap_leftovers()

    def start(self) -> ServerProcess:
        env = {**os.environ, **self.env, TAG_VARIABLE: self.tag}
        command = self.command or [sys.executable, "-m", "openfal", "serve", "--port",
                                   str(self.port), "--data-dir", str(self.data_dir), *self.args]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True)
        ready = threading.Event()
        threading.Thread(target=self._collect, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(START_TIMEOUT) or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError(f"{self.name} did not start:\n" + "".join(self.output))
        return self

    def _collect(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)
            if LISTENING in line and not self.url:
                self.url = line.split()[-1]
                self.port = int(self.url.rsplit(":", 1)[1])
            if self.ready_text in line:
                ready.set()
        ready.set()

    @property
    def admin_key(self) -> str:
        """The ADMIN key a server with auth made on first start."""
        return (self.data_dir / "admin.key").read_text().strip()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, **kwargs) -> httpx.Client:
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, **kwargs)

    def stop(self, drain_seconds: float = 5.0) -> None:
        """SIGTERM: the server drains; if it has not stopped after ``drain_seconds``, a
        second SIGTERM stops it at once, and past that it is killed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, drain_seconds), (signal.SIGTERM, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
        self.kill()

    def wait_exit(self, timeout: float) -> int:
        """The server's exit code, once it has exited by itself (within ``timeout``)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """``kill -9`` the server process (its runners notice and exit)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def tagged_pids(self) -> list[int]:
        """Processes that still carry this server's tag (runners included)."""
        pids = []
        marker = f"{TAG_VARIABLE}={self.tag}".encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    def reap_leftovers(self) -> None:
        for pid in self.tagged_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def worker_process(data_dir: Path, server_url: str, key: str, apps: list[str],
                   *args: str) -> ServerProcess:
    """``openfal worker`` for a server, in its own process group (start it with
    ``start()``); ready once it has asked the gateway how to run and started claiming."""
    command = [sys.executable, "-m", "openfal", "worker", "--server", server_url, "--key", key,
               "--data-dir", str(data_dir), *[a for ref in apps for a in ("--app", ref)], *args]
    return ServerProcess(data_dir, [], command=command, name="openfal worker",
                         ready_text=" serving ")
