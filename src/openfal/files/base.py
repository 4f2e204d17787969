"""What a file store is: records, errors and the ``FileStorage`` interface.

The interface mirrors what an S3-compatible object store offers (put, ranged get, delete,
multipart uploads, expiry): ``local.py`` keeps files on the local disk, ``s3.py`` in a bucket.
The rules both follow (ids, part lists) are here. Every method is synchronous: runner
processes call them from worker threads, the gateway through ``asyncio.to_thread``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

MAX_PART_NUMBER = 10_000  # as in S3
ABANDON_AFTER = 24 * 3600.0  # seconds without activity before an upload or staged file is swept
_MD5 = re.compile(r"[0-9a-f]{32}")
_ID = re.compile(r"[A-Za-z0-9_-]{32}")


def new_id() -> str:
    """A file or upload id: 32 characters of [A-Za-z0-9_-], safe in a path or an object key."""
    return secrets.token_urlsafe(24)


def valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def file_url(public_url: str, file_id: str, file_name: str) -> str:
    """A stored file's public URL; the Python client's multipart routes nest under it."""
    return f"{public_url}/files/{file_id}/{quote(file_name, safe='')}"


def normalize_etag(etag: str) -> str | None:
    """An etag as clients send it back (maybe quoted, maybe weak) as md5 hex, or None."""
    bare = etag.strip().removeprefix("W/").strip('"').lower()
    return bare if _MD5.fullmatch(bare) else None


@dataclass(frozen=True)
class StoredFile:
    id: str
    file_name: str
    content_type: str
    size: int
    etag: str  # md5 hex of the content, unquoted
    created_at: float
    expires_at: float | None  # Unix time; None: kept until deleted

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class MultipartUpload:
    """A started multipart upload. ``file_id`` is the id the file will have once complete,
    so its URL can be handed out before the bytes arrive (as S3 fixes the key up front)."""

    upload_id: str
    file_id: str


class StorageError(Exception):
    """Base of the errors a ``FileStorage`` raises on bad requests."""


class NotFound(StorageError):
    """No such file or upload (or it expired, or the id is malformed)."""


class InvalidParts(StorageError):
    """A part number or a list of parts that cannot complete an upload."""


class FileTooLarge(StorageError):
    """The completed file would be larger than allowed."""


def check_part_number(part_number: int) -> None:
    if not (isinstance(part_number, int) and 1 <= part_number <= MAX_PART_NUMBER):
        raise InvalidParts(f"part numbers go from 1 to {MAX_PART_NUMBER}, not {part_number!r}")


def select_parts(parts: list[tuple[int, str]],
                 uploaded: Mapping[int, Collection[str]]) -> list[tuple[int, str]]:
    """The ``(part_number, md5 hex)`` a completion lists, in part-number order, checked
    against ``uploaded`` (each uploaded part number: the etags it may be completed with)."""
    if not parts:
        raise InvalidParts("no parts listed")
    chosen: dict[int, str] = {}
    for number, etag in parts:
        check_part_number(number)
        if number in chosen:
            raise InvalidParts(f"part {number} is listed twice")
        if number not in uploaded:
            raise InvalidParts(f"part {number} was not uploaded")
        bare = normalize_etag(etag) if isinstance(etag, str) else None
        if bare is None or bare not in uploaded[number]:
            raise InvalidParts(f"part {number}: etag {etag!r} does not match the uploaded part")
        chosen[number] = bare
    return sorted(chosen.items())


class FileStorage(Protocol):
    staging_dir: Path
    """A local folder on which callers may write files before handing them over with
    ``put_path(..., move=True)`` or ``put_part_path(..., move=True)``; entries left there
    (by a crash) are swept by ``collect_expired``."""

    def put(self, data: bytes, *, file_name: str, content_type: str,
            expires_at: float | None = None) -> StoredFile: ...

    def put_path(self, path: Path, *, file_name: str, content_type: str,
                 expires_at: float | None = None, move: bool = False) -> StoredFile:
        """Store the file at ``path`` without loading it in memory; ``move`` takes it over."""
        ...

    def stat(self, file_id: str) -> StoredFile | None:
        """The file's record; None if unknown, expired or not a valid id."""
        ...

    def read(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``[start, end)`` (``end`` None: to the end) in chunks. Raises NotFound
        at the call, not at the first chunk."""
        ...

    def delete(self, file_id: str) -> bool:
        """Remove the file; whether it existed."""
        ...

    def create_multipart(self, *, file_name: str, content_type: str,
                         expires_at: float | None = None) -> MultipartUpload: ...

    def put_part(self, upload_id: str, part_number: int, data: bytes) -> str:
        """Store one part (1 to 10000; a later one replaces it); its etag (md5 hex)."""
        ...

    def put_part_path(self, upload_id: str, part_number: int, path: Path,
                      move: bool = False) -> str: ...

    def complete_multipart(self, upload_id: str, parts: list[tuple[int, str]], *,
                           max_size: int | None = None) -> StoredFile:
        """Join the listed ``(part_number, etag)`` parts, in part-number order whatever the
        list's order. Raises InvalidParts for duplicates, unknown parts or an etag that
        does not match, FileTooLarge past ``max_size``."""
        ...

    def collect_expired(self, now: float) -> int:
        """Delete the files expired at ``now`` (and abandoned uploads); how many files."""
        ...

    def stored_bytes(self) -> int:
        """The size of every stored file, together (a listing of the whole store)."""
        ...
