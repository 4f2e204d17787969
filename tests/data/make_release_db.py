"""How tests/data/release-0.1.db was made: by the store of commit 1c8a707, the release
before the store became the queue (its API, not today's). To make it again:

    git worktree add /tmp/release 1c8a707
    PYTHONPATH=/tmp/release/src python tests/data/make_release_db.py tests/data/release-0.1.db
"""

import asyncio
import sys
import time
from pathlib import Path

from openfal.store.base import KeyRecord, Mode, Outcome, RequestRecord, Status, WebhookTarget
from openfal.store.sqlite import SQLiteStore


def record(request_id: str, now: float, **more: object) -> RequestRecord:
    return RequestRecord(id=request_id, app_id="openfal/echo", endpoint_id="openfal/echo",
                         path="/", mode=Mode.QUEUE, status=Status.IN_QUEUE,
                         payload=b'{"text": "%s"}' % request_id.encode(), created_at=now,
                         **more)  # type: ignore[arg-type]


async def main(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    now = time.time()
    await store.add_key(KeyRecord(id="k1", secret_hash="0" * 64, scope="ADMIN", name="old",
                                  created_at=now))
    await store.add_request(record("queued", now, key_id="k1", options={"key_limit": 4}))
    await store.add_request(record("running", now))
    await store.start_attempt("running", 1, "att-running-1", "runner1", now)
    await store.add_request(record("done", now))
    await store.start_attempt("done", 1, "att-done-1", "runner1", now)
    await store.end_attempt("done", 1, now, "ok", None)
    await store.complete("done", Outcome(status=200, body=b'{"text": "done"}'), now,
                         WebhookTarget(url="https://example.com/hook", user_id="k1"))
    await store.claim_due_webhooks(now, 10)  # left delivering, as a crash would
    await store.close()


asyncio.run(main(Path(sys.argv[1])))
