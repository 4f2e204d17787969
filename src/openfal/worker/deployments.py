"""Deployed apps (``openfal deploy``) kept in step with the platform's current revisions.

The store holds each deployed app's revisions and which one is current. A gateway and each
``openfal worker`` run a :class:`Deployments` that reads the current revisions through its
work link every few seconds (and at once after a deploy through this gateway), unpacks a
revision it has not seen into its cache (``<cache>/<owner>/<name>/<digest>``), loads it,
and switches: the new revision's endpoints take the app's next requests (the registry) and
a new pool of runners serves them; the old revision's pool claims nothing more, its running
requests finish on their runners, then those stop. An app no longer deployed is retired the
same way, and its waiting requests fail (404, ``app_deleted``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from openfal.app.bundle import COMPLETE_MARKER, BundleError, unpack
from openfal.app.registry import Registry, ServedApp
from openfal.errors import ConfigError
from openfal.store.base import AppRevision
from openfal.worker.runners import RunnerSetupFailed

if TYPE_CHECKING:
    from openfal.worker.link import WorkLink
    from openfal.worker.worker import Worker

log = logging.getLogger(__name__)

SYNC_SECONDS = 2.0


class Deployments:
    def __init__(self, link: WorkLink, registry: Registry, worker: Worker | None,
                 cache_dir: Path):
        self.link = link
        self.registry = registry
        self.worker = worker
        self.cache_dir = cache_dir
        self.active: dict[str, ServedApp] = {}  # by app id
        self._failed: dict[str, int] = {}  # app id -> the revision that would not load
        self._lock = asyncio.Lock()
        self._loading = threading.Lock()

    async def sync(self) -> None:
        """Serve what is deployed now; one sync at a time."""
        async with self._lock:
            current = await self.link.deployed_apps()
            for app_id, revision in sorted(current.items()):
                served = self.active.get(app_id)
                if (served is None or served.revision != revision.revision) \
                        and self._failed.get(app_id) != revision.revision:
                    await self._switch(revision)
            for app_id in sorted(set(self.active) - set(current)):
                self._retire(self.active.pop(app_id), deleted=True)

    async def keep_in_step(self) -> None:
        """Sync every :data:`SYNC_SECONDS` until cancelled (deploys through other gateways
        of a shared store; for a worker, every deploy)."""
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                await self.sync()
            except Exception:
                log.exception("reading the deployed apps failed; trying again")

    async def _switch(self, revision: AppRevision) -> None:
        try:
            folder = await self._unpacked(revision)
            served = await self.load(folder, revision.ref, revision.app_id,
                                     revision.revision)
            if (taken := self.registry.taken_by(served)) and taken[1].app_id != served.app_id:
                raise ConfigError(f"endpoint {taken[0]!r} is already served by {taken[1].ref}")
        except (BundleError, ConfigError) as exc:
            self._failed[revision.app_id] = revision.revision
            log.error("%s revision %d cannot be served here: %s", revision.app_id,
                      revision.revision, exc)
            return
        old = self.active.get(revision.app_id)
        if old is not None:
            self.registry.remove(old.ref)
        self.registry.add_loaded(served)
        self.active[revision.app_id] = served
        self._failed.pop(revision.app_id, None)
        if self.worker is not None:
            self.worker.add_app(served)
        if old is not None:
            self._retire(old, deleted=False)
        log.info("%s: serving revision %d (%s)", served.app_id, revision.revision,
                 ", ".join(served.endpoint_ids()))

    async def load(self, folder: Path, ref: str, app_id: str | None = None,
                   revision: int | None = None) -> ServedApp:
        """The app of the bundle unpacked in ``folder`` (``ref`` names it inside). Imported
        in a thread, one app at a time: an app's module may take seconds to import (torch at
        its top), which on the event loop would stall every request meanwhile."""
        return await asyncio.to_thread(self._load, folder, ref, app_id, revision)

    def _load(self, folder: Path, ref: str, app_id: str | None,
              revision: int | None) -> ServedApp:
        file_name, _, class_name = ref.partition("::")
        with self._loading:
            _forget_modules_under(self.cache_dir)
            return self.registry.load(f"{folder / file_name}::{class_name}", app_id, revision)

    async def _unpacked(self, revision: AppRevision) -> Path:
        """Each revision in a folder of its own (a redeploy of the same code too: each
        revision has its own pool of runners, and pools are known by their app's ref)."""
        folder = self.cache_dir / revision.app_id / f"{revision.revision}-{revision.digest}"
        if (folder / COMPLETE_MARKER).exists():
            return folder
        data = await self.link.app_bundle(revision.app_id, revision.revision)
        if data is None:
            raise BundleError("its bundle is gone from the store")
        if hashlib.sha256(data).hexdigest() != revision.digest:
            raise BundleError("its bundle does not match its digest")
        await asyncio.to_thread(unpack, data, folder)
        return folder

    def _retire(self, served: ServedApp, *, deleted: bool) -> None:
        self.registry.remove(served.ref)
        if self.worker is None:
            return
        failure = None
        if deleted:
            body = json.dumps({"detail": f"The app {served.app_id} was deleted",
                               "error_type": "app_deleted"}).encode()
            failure = RunnerSetupFailed("the app was deleted", (404, body))
        self.worker.retire_app(served.ref, failure)
        log.info("%s: revision %s %s", served.app_id, served.revision,
                 "deleted" if deleted else "retired; its running requests finish on it")


def _forget_modules_under(root: Path) -> None:
    """Drop the modules imported from earlier revisions' folders (an app's own helper
    modules), so that loading a new revision imports its own copies."""
    prefix = str(root.resolve())
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(prefix):
            del sys.modules[name]
    sys.path[:] = [entry for entry in sys.path if not entry.startswith(prefix)]
