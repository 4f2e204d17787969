"""Wiring: settings, the parts of a running platform, and the process that serves it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from openfal.app.registry import Registry
from openfal.dispatcher.dispatcher import Dispatcher
from openfal.files.gc import collect_expired_forever
from openfal.files.local import LocalFileStorage
from openfal.files.signing import Signer
from openfal.runner.environment import runner_environment
from openfal.store.sqlite import SQLiteStore

BUILTIN_APPS = [
    "openfal.models.echo::Echo",
    "openfal.models.flux::Flux",
    "openfal.models.flux::OpenfalFlux",
    "openfal.models.tts::TTS",
]
DAY = 24 * 3600.0


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = field(default_factory=lambda: Path.home() / ".openfal")
    apps: list[str] = field(default_factory=list)
    builtin_apps: bool = True
    owner: str = "openfal"
    max_body_bytes: int = 32 * 1024 * 1024
    retention_seconds: float = 30 * DAY
    durability: str = "normal"
    public_url: str | None = None  # base of the file URLs handed out; None: the listen URL
    default_file_ttl_seconds: float | None = 7 * DAY  # None: files never expire
    max_upload_bytes: int = 1024 * 1024 * 1024  # one uploaded file, and one part of one
    file_gc_interval_seconds: float | None = None  # None: derived from the TTL
    models_dir_override: Path | None = None  # None: <data_dir>/models
    max_download_bytes: int = 512 * 1024 * 1024  # one file a request points at

    @property
    def database_path(self) -> Path:
        return self.data_dir / "openfal.db"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def models_dir(self) -> Path:
        return self.models_dir_override or self.data_dir / "models"

    @property
    def file_gc_interval(self) -> float:
        if self.file_gc_interval_seconds is not None:
            return self.file_gc_interval_seconds
        ttl = self.default_file_ttl_seconds
        return 60.0 if ttl is None else min(60.0, max(0.1, ttl / 10))


class Platform:
    """Everything one gateway process runs: store, app registry, dispatcher."""

    def __init__(self, settings: Settings, listen_url: str | None = None):
        self.settings = settings
        self.public_url = (settings.public_url or listen_url
                           or f"http://{settings.host}:{settings.port}").rstrip("/")
        self.files = LocalFileStorage(settings.files_dir)
        self.signer = Signer.from_file(settings.data_dir / "storage.key")
        self._files_gc: asyncio.Task[None] | None = None
        self.registry = Registry(owner=settings.owner)
        for ref in (BUILTIN_APPS if settings.builtin_apps else []) + settings.apps:
            self.registry.add(ref)
        self.store = SQLiteStore(settings.database_path, settings.durability)
        self.dispatcher = Dispatcher(
            self.store, self.registry, retention_seconds=settings.retention_seconds,
            runner_env=runner_environment(
                files_dir=settings.files_dir, public_url=self.public_url,
                file_ttl_seconds=settings.default_file_ttl_seconds,
                models_dir=settings.models_dir,
                max_download_bytes=settings.max_download_bytes))

    async def start(self) -> None:
        await self.store.open()
        self._files_gc = asyncio.create_task(
            collect_expired_forever(self.files, self.settings.file_gc_interval))
        await self.dispatcher.start()

    async def stop(self) -> None:
        await self.dispatcher.stop()
        if self._files_gc is not None:
            self._files_gc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._files_gc
        await self.store.close()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    # Listen now, so that callers told "listening" queue in the backlog rather than being
    # refused while the app starts up.
    sock.listen(2048)
    return sock


def serve(settings: Settings, on_ready: Callable[[Platform, str], None] | None = None) -> None:
    """Run the platform until interrupted. ``on_ready`` gets the URL it listens on."""
    import uvicorn

    from openfal.gateway.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    platform = Platform(settings, listen_url=url)
    app = create_app(platform, on_ready=(lambda p: on_ready(p, url)) if on_ready else None)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
