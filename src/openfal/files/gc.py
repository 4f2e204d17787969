"""The background task that deletes expired files."""

from __future__ import annotations

import asyncio
import logging
import time

from openfal.files.base import FileStorage

log = logging.getLogger(__name__)


async def collect_expired_forever(storage: FileStorage, interval: float) -> None:
    """Every ``interval`` seconds, delete what has expired; a failed round is logged and
    the next one tried."""
    while True:
        try:
            removed = await asyncio.to_thread(storage.collect_expired, time.time())
        except Exception:  # a background loop: the next round may well succeed
            log.exception("collecting expired files failed")
        else:
            if removed:
                log.info("removed %d expired files", removed)
        await asyncio.sleep(interval)
