"""Wiring: settings, the parts of a running platform, and the process that serves it."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from openfal.app.registry import Registry
from openfal.dispatcher.dispatcher import Dispatcher
from openfal.store.sqlite import SQLiteStore

BUILTIN_APPS = ["openfal.models.echo::Echo"]
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

    @property
    def database_path(self) -> Path:
        return self.data_dir / "openfal.db"


class Platform:
    """Everything one gateway process runs: store, app registry, dispatcher."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = Registry(owner=settings.owner)
        for ref in (BUILTIN_APPS if settings.builtin_apps else []) + settings.apps:
            self.registry.add(ref)
        self.store = SQLiteStore(settings.database_path, settings.durability)
        self.dispatcher = Dispatcher(self.store, self.registry,
                                     retention_seconds=settings.retention_seconds)

    async def start(self) -> None:
        await self.store.open()
        await self.dispatcher.start()

    async def stop(self) -> None:
        await self.dispatcher.stop()
        await self.store.close()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
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
    platform = Platform(settings)
    app = create_app(platform, on_ready=(lambda p: on_ready(p, url)) if on_ready else None)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
