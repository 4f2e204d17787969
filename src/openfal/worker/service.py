"""``openfal worker``: runner processes on this host for a gateway elsewhere.

It asks the gateway how runners are to be set up (where files go, the public URL, the
owner of endpoint ids, the lease length), starts a :class:`Worker` over an HTTP link, and
on SIGTERM or SIGINT drains: claims nothing more, lets running requests finish within the
grace period and hands the rest back to the queue (a second signal stops at once). Its
runners get the app secrets, opened with ``OPENFAL_SECRETS_KEY`` (the gateway's key). Apps
with ``requirements`` get Python environments of their own, kept in ``environments_dir``
(``--environments-dir``, ``OPENFAL_ENVIRONMENTS_DIR``; default ``DATA_DIR/environments``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from openfal.app.registry import Registry
from openfal.errors import ConfigError
from openfal.runner.environment import runner_environment
from openfal.secrets import SecretBox
from openfal.upstream.config import UpstreamSet
from openfal.worker.deployments import Deployments
from openfal.worker.environments import AppEnvironments
from openfal.worker.link import HttpLink
from openfal.worker.worker import Worker

log = logging.getLogger("openfal.worker")


@dataclass
class WorkerSettings:
    server_url: str
    key: str
    apps: list[str]
    data_dir: Path
    models_dir: Path | None = None
    files: str | None = None  # None: where the gateway says (its folder or bucket)
    drain_seconds: float = 30.0
    upstreams: UpstreamSet = field(default_factory=UpstreamSet)
    gpus: list[str] | None = None  # the GPUs runners get, one runner each; None: not managed
    # Where the apps' own Python environments are kept; None: <data_dir>/environments.
    environments_dir: Path | None = None


def runner_env_for(settings: WorkerSettings, hello: dict) -> dict[str, str]:
    return runner_environment(
        files=settings.files or hello["files"], public_url=hello["public_url"],
        file_ttl_seconds=hello["file_ttl_seconds"],
        models_dir=settings.models_dir or settings.data_dir / "models",
        max_download_bytes=hello["max_download_bytes"],
        allow_networks=hello["allow_networks"]) | settings.upstreams.to_environment()


async def run_worker(settings: WorkerSettings) -> None:
    # Before anything else: a malformed key stops the worker at once, in one line.
    secret_box = SecretBox.from_variable()
    link = HttpLink(settings.server_url, settings.key)
    try:
        hello = await link.hello()
    except Exception as exc:
        await link.close()
        raise ConfigError(f"cannot reach the gateway at {settings.server_url}: {exc}") from None
    registry = Registry(owner=hello["owner"])
    for ref in settings.apps:
        registry.add(ref)
    worker = Worker(link, list(registry.apps.values()),
                    runner_env=runner_env_for(settings, hello),
                    lease_seconds=hello["lease_seconds"], secret_box=secret_box,
                    gpus=settings.gpus, environments=AppEnvironments(
                        settings.environments_dir or settings.data_dir / "environments"))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, stopping)
    worker.start()
    # Apps deployed to the platform (`openfal deploy`) are served here too, each at its
    # current revision, fetched from the gateway.
    deployments = Deployments(link, registry, worker, settings.data_dir / "apps")
    await deployments.sync()
    syncing = asyncio.create_task(deployments.keep_in_step())
    log.info("worker %s serving %s for %s", worker.id, ", ".join(registry.endpoint_ids()),
             settings.server_url)
    await stopping.wait()
    syncing.cancel()
    log.info("draining: claiming nothing more; waiting up to %gs for %d running",
             settings.drain_seconds, worker.running())
    handed_back = await worker.drain(settings.drain_seconds)
    if handed_back:
        log.warning("handed back %d running requests", handed_back)
    await worker.stop()
    await link.close()


def _on_signal(stopping: asyncio.Event) -> None:
    if stopping.is_set():
        log.warning("second signal: stopping now")
        raise SystemExit(1)
    stopping.set()
