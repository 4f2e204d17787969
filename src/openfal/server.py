"""Wiring: settings, the parts of a running platform, and the process that serves it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from openfal.app.registry import Registry
from openfal.auth.keys import Keyring, Scope
from openfal.catalog.apps import CATALOG_APP_REFS
from openfal.dispatcher.dispatcher import Dispatcher
from openfal.errors import ConfigError
from openfal.fetch import NetworkPolicy
from openfal.files import open_file_storage
from openfal.files.gc import collect_expired_forever
from openfal.files.signing import Signer
from openfal.metrics import Metrics
from openfal.net.tls import trust_environment
from openfal.runner.environment import runner_environment
from openfal.secrets import SecretBox
from openfal.store import open_store
from openfal.store.base import Store
from openfal.store.sqlite import SQLiteStore
from openfal.upstream.config import UpstreamSet
from openfal.webhooks.delivery import DeliveryPolicy, WebhookDelivery
from openfal.worker.deployments import Deployments
from openfal.worker.environments import AppEnvironments
from openfal.worker.worker import DEFAULT_LEASE_SECONDS, Worker

# The apps whose runners run models (or echo) here; a worker serves these by default.
# How long the event loop may hold the GIL while another thread waits for it. The store's
# writer thread (and the reader threads) need it for a moment at each statement; at
# Python's default of 5 ms a busy loop stretched every commit by several of those waits,
# and with them every submit, claim and outcome (measured: bench_gateway's queued round
# trips at 64 clients went from 136/s to about 320/s at 0.5 ms, direct runs at 16
# connections from 1.9k/s to 2.4-2.9k/s; a direct run at one connection did not change).
GIL_SWITCH_SECONDS = 0.0005
# Python collects its youngest objects every 700 allocations and walks everything alive at
# each full collection. A server allocates and frees per request and keeps a few thousand
# recent results alive (Dispatcher.recent): full collections took a third of some seconds of
# queued round trips. Young collections every 20,000 allocations, full ones 20 times rarer,
# and the startup heap frozen (gc.freeze in serve): 711-1,156 -> 1,333-1,764 streamed round
# trips/s in consecutive 5 s windows on one server.
GC_THRESHOLDS = (20_000, 20, 20)

LOCAL_APPS = [
    "openfal.models.echo::Echo",
    "openfal.models.flux::Flux",
    "openfal.models.flux::OpenfalFlux",
    "openfal.models.tts::TTS",
    "openfal.models.flux_kontext::FluxKontextLora",
    "openfal.models.flux_krea::FluxKreaLora",
    "openfal.models.hidream::HidreamI1Full",
    "openfal.models.kandinsky::Kandinsky5",
    "openfal.models.wan::WanT2V",
    "openfal.models.wan::WanT2V14B",
    "openfal.models.wan::WanI2V",
    "openfal.models.wan_trainer::WanTrainerT2V",
    "openfal.models.wan_trainer::WanTrainerT2V14B",
    "openfal.models.wan_trainer::WanTrainerI2V720P",
]
BUILTIN_APPS = [
    *LOCAL_APPS,
    *CATALOG_APP_REFS,  # the model pages' endpoints, routed to an upstream
]
DAY = 24 * 3600.0
log = logging.getLogger("openfal")


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
    # Networks the server may fetch from on a caller's behalf despite being private.
    allow_networks: list[str] = field(default_factory=list)
    auth: bool = True  # False: every caller may do everything (a private laptop)
    default_key_concurrency: int | None = 16  # running requests per key, unless set per key
    tls: bool = False  # serve https/wss with a certificate from <data_dir>/tls
    tls_names: list[str] = field(default_factory=list)  # more DNS names/IPs for it
    proxy: bool = True  # with tls: run the CONNECT proxy for the fal host names
    proxy_port: int | None = None  # None: port + 1, or any free port when port is 0
    webhook_max_attempts: int = 10  # delivery attempts before a webhook is marked failed
    webhook_retry_base_seconds: float = 15.0  # first retry delay, doubling: ~2 h for 10
    webhook_timeout_seconds: float = 15.0  # one delivery attempt
    # Upstream providers that routed endpoints are forwarded to (--config).
    upstreams: UpstreamSet = field(default_factory=UpstreamSet)
    # Shutdown: running requests get this long to finish before the rest is handed back.
    drain_seconds: float = 30.0
    # Direct runs (and /stream, realtime messages) one key may have waiting for a runner;
    # past it a direct run is a 429 with Retry-After. None: no bound.
    max_waiting_direct_per_key: int | None = 32
    # Open connections the gateway accepts at once; past it new ones get a 503.
    max_connections: int = 2048
    # A request's headers must arrive within this time and fit in this many bytes.
    header_timeout_seconds: float = 10.0
    max_header_bytes: int = 64 * 1024
    # Where requests, keys and webhooks live: None for <data_dir>/openfal.db (SQLite), or
    # postgresql://user:pass@host:port/db, shared by several gateways.
    store_url: str | None = None
    # Where uploads and outputs live: None for <data_dir>/files, or s3://bucket/prefix.
    files_url: str | None = None
    runners: bool = True  # False: this gateway runs no runners (workers serve its apps)
    # A worker's claim on a request lapses this long after its last renewal.
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    public_metrics: bool = False  # GET /metrics without an ADMIN key
    # The GPUs this server's runners get, one runner each (--gpus); None: not managed.
    gpus: list[str] | None = None

    @property
    def network_policy(self) -> NetworkPolicy:
        return NetworkPolicy.allowing(self.allow_networks)

    @property
    def admin_key_path(self) -> Path:
        return self.data_dir / "admin.key"

    @property
    def webhook_keys_dir(self) -> Path:
        return self.data_dir / "webhook-keys"

    @property
    def files(self) -> str:
        """Where files live, as runners are told (a folder or an s3:// URL)."""
        return self.files_url or str(self.data_dir / "files")

    @property
    def models_dir(self) -> Path:
        return self.models_dir_override or self.data_dir / "models"

    @property
    def environments_dir(self) -> Path:
        """Where the apps' own Python environments (their ``requirements``) are kept."""
        return self.data_dir / "environments"

    @property
    def file_gc_interval(self) -> float:
        if self.file_gc_interval_seconds is not None:
            return self.file_gc_interval_seconds
        ttl = self.default_file_ttl_seconds
        return 60.0 if ttl is None else min(60.0, max(0.1, ttl / 10))


class Service(Protocol):
    """Something the platform starts after its own parts and stops before them."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Platform:
    """Everything one gateway process runs: store, app registry, dispatcher, the key that
    seals app secrets."""

    def __init__(self, settings: Settings, listen_url: str | None = None,
                 store: Store | None = None):
        self.settings = settings
        # First: a data dir another server holds is refused before anything is written.
        self.store = store or open_store(settings.store_url, settings.data_dir,
                                         settings.durability)
        if isinstance(self.store, SQLiteStore):
            self.store.lock()
        self.secret_box = SecretBox.from_environment(settings.data_dir)
        self.public_url = (settings.public_url or listen_url
                           or f"http://{settings.host}:{settings.port}").rstrip("/")
        self.files = open_file_storage(settings.files_url, settings.data_dir)
        self.signer = Signer(b"")  # its secret is the store's, read at start
        self._files_gc: asyncio.Task[None] | None = None
        self._keys_refresh: asyncio.Task[None] | None = None
        self.registry = Registry(owner=settings.owner)
        for ref in (BUILTIN_APPS if settings.builtin_apps else []) + settings.apps:
            self.registry.add(ref)
        self.keyring = Keyring(self.store, settings.default_key_concurrency)
        self.new_admin_key: str | None = None
        self.dispatcher = Dispatcher(
            self.store, self.registry, retention_seconds=settings.retention_seconds,
            lease_seconds=settings.lease_seconds,
            max_waiting_direct_per_key=settings.max_waiting_direct_per_key)
        self.worker = Worker(
            self.dispatcher, list(self.registry.apps.values()),
            runner_env=self.runner_env(), lease_seconds=settings.lease_seconds,
            kind="local", secret_box=self.secret_box, gpus=settings.gpus,
            environments=AppEnvironments(settings.environments_dir)
        ) if settings.runners else None
        # Apps deployed while servers run (`openfal deploy`), kept in step with the store.
        self.deployments = Deployments(self.dispatcher, self.registry, self.worker,
                                       settings.data_dir / "apps")
        self._deployments_sync: asyncio.Task[None] | None = None
        self.webhooks = WebhookDelivery(
            self.store, settings.webhook_keys_dir,
            DeliveryPolicy(max_attempts=settings.webhook_max_attempts,
                           base_delay=settings.webhook_retry_base_seconds,
                           timeout=settings.webhook_timeout_seconds),
            settings.network_policy)
        self.dispatcher.on_webhook_queued = self.webhooks.wake
        self.metrics = Metrics()
        self.dispatcher.on_complete = self.metrics.request_finished
        self.services: list[Service] = [self.webhooks]

    def runner_env(self) -> dict[str, str]:
        """What this gateway's runners are told (``openfal worker`` builds the same)."""
        settings = self.settings
        return (runner_environment(
                    files=settings.files, public_url=self.public_url,
                    file_ttl_seconds=settings.default_file_ttl_seconds,
                    models_dir=settings.models_dir,
                    max_download_bytes=settings.max_download_bytes,
                    allow_networks=settings.allow_networks)
                | settings.upstreams.to_environment()
                # runners fetch this server's own https file URLs
                | (trust_environment(settings.data_dir) if settings.tls else {}))

    async def start(self) -> None:
        await self.store.open()
        self.signer = Signer(await self.store.put_secret_once(
            "storage-signing", Signer.initial_secret(self.settings.data_dir / "storage.key")))
        await self.keyring.load()
        if self.settings.auth and not self.keyring.active():
            await self._create_first_admin_key()
        if self.store.shared:  # other gateways make and revoke keys too
            self._keys_refresh = asyncio.create_task(self.keyring.refresh_forever())
        self._files_gc = asyncio.create_task(
            collect_expired_forever(self.files, self.settings.file_gc_interval))
        await self.dispatcher.start()
        if self.worker is not None:
            self.worker.start()
        await self.deployments.sync()
        self._deployments_sync = asyncio.create_task(self.deployments.keep_in_step())
        for service in self.services:
            await service.start()

    async def _create_first_admin_key(self) -> None:
        """With no key at all, nobody could use the server: make an ADMIN key, kept (0600)
        in the data dir for ``openfal env``, and shown once by ``openfal serve``. Gateways
        starting together on a new shared store make one between them: the one whose claim
        the store keeps."""
        if self.store.shared:
            claim = secrets.token_bytes(16)
            if await self.store.put_secret_once("first-admin-key", claim) != claim:
                return
        _, secret = await self.keyring.create(Scope.ADMIN, "first admin key")
        path = self.settings.admin_key_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
        self.new_admin_key = secret

    async def drain(self) -> None:
        """Stop taking work, let running requests finish within the grace period, and hand
        back the rest (SIGTERM, Ctrl-C)."""
        grace = self.settings.drain_seconds
        running = self.worker.running() if self.worker is not None else 0
        log.info("shutting down: accepting no new requests; waiting up to %gs for %d running "
                 "(a second signal stops at once)", grace, running)
        await self.dispatcher.stop_accepting()
        handed_back = await self.worker.drain(grace) if self.worker is not None else 0
        self.dispatcher.drain_over()
        if handed_back:
            log.warning("grace period over: handed back %d running requests (queued ones "
                        "resume after a restart)", handed_back)
        else:
            log.info("drained: every running request finished")

    async def stop(self) -> None:
        for service in reversed(self.services):
            await service.stop()
        if self.worker is not None:
            await self.worker.stop()
        await self.dispatcher.stop()
        for task in (self._files_gc, self._keys_refresh, self._deployments_sync):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.store.close()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    # Listen now, so that callers told "listening" queue in the backlog rather than being
    # refused while the app starts up.
    sock.listen(2048)
    return sock


def serve(settings: Settings, on_ready: Callable[[Platform, str], None] | None = None) -> None:
    """Run the platform until interrupted. ``on_ready`` gets the URL it listens on.

    Raises :class:`ConfigError` when it cannot start (data dir in use, port taken)."""
    import uvicorn

    from openfal.gateway.app import create_app
    from openfal.net.hosts import reachable_host
    from openfal.net.http_server import DrainingServer, guarded_protocol
    from openfal.net.proxy import ConnectProxy
    from openfal.net.runtime import RuntimeFile, RuntimeInfo
    from openfal.net.tls import ensure_tls

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    gc.set_threshold(*GC_THRESHOLDS)
    store = open_store(settings.store_url, settings.data_dir, settings.durability)
    if isinstance(store, SQLiteStore):
        store.lock()  # before anything else: a second server on one data dir stops here
    else:
        asyncio.run(_reach(store))  # an unreachable database is one line, not a traceback
    tls = ensure_tls(settings.data_dir, settings.tls_names) if settings.tls else None
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    url = f"{'https' if tls else 'http'}://{'[' + host + ']' if ':' in host else host}:{port}"
    proxy = (ConnectProxy.bind(_proxy_port(settings), platform=(reachable_host(host), port))
             if tls and settings.proxy else None)
    platform = Platform(settings, listen_url=url, store=store)
    platform.services += [*([proxy] if proxy else []), RuntimeFile(
        settings.data_dir, RuntimeInfo.describe(url, proxy.url if proxy else None, tls))]
    app = create_app(platform, on_ready=(lambda p: on_ready(p, url)) if on_ready else None)
    config = uvicorn.Config(
        app, loop="uvloop", log_level="warning", access_log=False,
        http=guarded_protocol(settings.header_timeout_seconds, settings.max_header_bytes),
        limit_concurrency=settings.max_connections,
        # Draining has already let running requests finish: what is left are idle
        # connections and status streams, which get a moment to close.
        timeout_graceful_shutdown=3,
        ssl_certfile=tls.server_cert if tls else None,
        ssl_keyfile=tls.server_key if tls else None)
    gc.freeze()  # what exists now lives as long as the server: no collection walks it again
    DrainingServer(config, platform.drain).run(sockets=[sock])
    log.info("stopped")


async def _reach(store: Store) -> None:
    """Connect to a shared store once, migrating it, before the server starts."""
    await store.open()
    await store.close()


def _proxy_port(settings: Settings) -> int:
    if settings.proxy_port is not None:
        return settings.proxy_port
    return settings.port + 1 if settings.port else 0
