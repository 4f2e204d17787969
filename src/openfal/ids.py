"""Request and attempt ids: UUIDs laid out as version 7 (RFC 9562): the first 48 bits are the
time in milliseconds, the other 74 free bits random.

Ids made one after another sort together, so the store's indexes on them (the requests'
primary key, attempt ids) grow at one end. With random (version 4) UUIDs every insert
dirtied a page of each such index somewhere in the middle: ~40 MB/s of WAL and checkpoint
writes at ~900 queued round trips/s, growing with the table. 74 random bits keep ids as
unguessable as anyone needs (a request id alone gives access to nothing a key does not).
"""

from __future__ import annotations

import os
import time
import uuid

_VERSION_BITS = 0xF << 76
_VARIANT_BITS = 0x3 << 62


def new_id() -> str:
    millis = time.time_ns() // 1_000_000
    value = (millis & (2**48 - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~_VERSION_BITS) | 0x7 << 76
    value = (value & ~_VARIANT_BITS) | 0x2 << 62
    return str(uuid.UUID(int=value))
