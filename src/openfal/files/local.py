"""Files on the local disk.

Layout under ``root``::

    <id>                  the bytes of a file
    <id>.json             its StoredFile record, written last: the file exists once it does
    uploads/<upload_id>/  a multipart upload: upload.json and <n>.<etag>.part files
    tmp/                  staging for atomic writes (temp file + os.replace)

Ids are random url-safe tokens checked against a strict pattern before any path is built,
so no id can name anything outside ``root``. Several processes (the gateway, runners) may
use one root at once: every change is a rename, and completing an upload first renames its
folder away, so only one completion can win.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from openfal.files.base import (
    ABANDON_AFTER,
    FileTooLarge,
    MultipartUpload,
    NotFound,
    StoredFile,
    check_part_number,
    new_id,
    select_parts,
    valid_id,
)
from openfal.files.disk import CHUNK_BYTES, hash_file, remove, sweep_stale, unchanged_since


@dataclass(frozen=True)
class _Staged:
    """Content written under a temporary name, ready to be renamed into place."""

    path: Path
    size: int
    etag: str


class LocalFileStorage:
    """A ``FileStorage`` in one folder. ``abandon_after``: seconds without activity after
    which an unfinished upload or a staged file is swept."""

    def __init__(self, root: Path, *, abandon_after: float = ABANDON_AFTER):
        self.root = root
        self.abandon_after = abandon_after
        self._uploads = root / "uploads"
        self.staging_dir = root / "tmp"
        for folder in (root, self._uploads, self.staging_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # Files
    def put(self, data: bytes, *, file_name: str, content_type: str,
            expires_at: float | None = None) -> StoredFile:
        staged = self._stage_bytes(data, self.staging_dir)
        return self._commit(new_id(), staged, file_name, content_type, expires_at)

    def put_path(self, path: Path, *, file_name: str, content_type: str,
                 expires_at: float | None = None, move: bool = False) -> StoredFile:
        staged = self._stage_path(Path(path), self.staging_dir, move)
        return self._commit(new_id(), staged, file_name, content_type, expires_at)

    def stat(self, file_id: str) -> StoredFile | None:
        if not valid_id(file_id):
            return None
        stored = _load_record(self._meta(file_id))
        return None if stored is None or stored.expired(time.time()) else stored

    def read(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        stored = self.stat(file_id)
        if stored is None:
            raise NotFound(f"no file {file_id!r}")
        try:
            handle = self._data(file_id).open("rb")
        except FileNotFoundError:
            raise NotFound(f"no file {file_id!r}") from None
        stop = stored.size if end is None else min(end, stored.size)
        return _chunks(handle, start, stop)

    def delete(self, file_id: str) -> bool:
        if not valid_id(file_id):
            return False
        meta = self._meta(file_id)
        existed = meta.exists()
        meta.unlink(missing_ok=True)  # first: the file is gone once its record is
        self._data(file_id).unlink(missing_ok=True)
        return existed

    # Multipart uploads
    def create_multipart(self, *, file_name: str, content_type: str,
                         expires_at: float | None = None) -> MultipartUpload:
        upload = MultipartUpload(upload_id=new_id(), file_id=new_id())
        folder = self._uploads / upload.upload_id
        folder.mkdir()
        info = {"file_id": upload.file_id, "file_name": file_name,
                "content_type": content_type, "expires_at": expires_at}
        staged = self._stage_bytes(json.dumps(info).encode(), folder)
        os.replace(staged.path, folder / "upload.json")
        return upload

    def put_part(self, upload_id: str, part_number: int, data: bytes) -> str:
        folder = self._upload_folder(upload_id)
        check_part_number(part_number)
        with _upload_gone_as_not_found(folder):
            return self._place_part(folder, part_number, self._stage_bytes(data, folder))

    def put_part_path(self, upload_id: str, part_number: int, path: Path,
                      move: bool = False) -> str:
        folder = self._upload_folder(upload_id)
        check_part_number(part_number)
        with _upload_gone_as_not_found(folder):
            staged = self._stage_path(Path(path), folder, move)
            return self._place_part(folder, part_number, staged)

    def complete_multipart(self, upload_id: str, parts: list[tuple[int, str]], *,
                           max_size: int | None = None) -> StoredFile:
        folder = self._upload_folder(upload_id)
        with _upload_gone_as_not_found(folder):
            info = json.loads((folder / "upload.json").read_bytes())
            chosen = _chosen_parts(folder, parts)
            size = sum(path.stat().st_size for path in chosen)
        if max_size is not None and size > max_size:
            raise FileTooLarge(f"the parts add up to {size} bytes, over the limit of "
                               f"{max_size} bytes")
        # Claim the upload: a concurrent completion (or part) now finds it gone.
        claimed = self._uploads / f".completing-{upload_id}-{secrets.token_hex(4)}"
        try:
            folder.rename(claimed)
        except FileNotFoundError:
            raise NotFound(f"no upload {upload_id!r}") from None
        try:
            paths = [claimed / path.name for path in chosen]
            if len(paths) == 1:
                staged = _Staged(paths[0], size, paths[0].name.split(".")[1])
            else:
                staged = self._stage_joined(paths)
            return self._commit(info["file_id"], staged, info["file_name"],
                                info["content_type"], info["expires_at"])
        finally:
            shutil.rmtree(claimed, ignore_errors=True)

    # Expiry
    def collect_expired(self, now: float) -> int:
        removed = 0
        for entry in list(os.scandir(self.root)):
            file_id = entry.name.removesuffix(".json")
            if entry.name.endswith(".json") and valid_id(file_id):
                stored = _load_record(Path(entry.path))
                if stored is not None and stored.expired(now) and self.delete(file_id):
                    removed += 1
        self._sweep_abandoned(now - self.abandon_after)
        return removed

    def stored_bytes(self) -> int:
        total = 0
        for entry in os.scandir(self.root):
            if valid_id(entry.name):
                with suppress(FileNotFoundError):  # deleted meanwhile
                    total += entry.stat(follow_symlinks=False).st_size
        return total

    def _sweep_abandoned(self, before: float) -> None:
        """Remove unfinished uploads, staged files and data left without a record (a crash
        between the two writes) that have not changed since ``before``."""
        for folder in (self._uploads, self.staging_dir):
            sweep_stale(folder, before)
        for entry in list(os.scandir(self.root)):
            if (valid_id(entry.name) and not self._meta(entry.name).exists()
                    and unchanged_since(entry, before)):
                remove(Path(entry.path))

    # Paths and writes
    def _data(self, file_id: str) -> Path:
        _check_id(file_id)
        return self.root / file_id

    def _meta(self, file_id: str) -> Path:
        _check_id(file_id)
        return self.root / f"{file_id}.json"

    def _upload_folder(self, upload_id: str) -> Path:
        if not valid_id(upload_id):
            raise NotFound(f"no upload {upload_id!r}")
        folder = self._uploads / upload_id
        if not (folder / "upload.json").is_file():
            raise NotFound(f"no upload {upload_id!r}")
        return folder

    def _commit(self, file_id: str, staged: _Staged, file_name: str, content_type: str,
                expires_at: float | None) -> StoredFile:
        """Move staged content into place as ``file_id``, then write its record."""
        stored = StoredFile(id=file_id, file_name=file_name, content_type=content_type,
                            size=staged.size, etag=staged.etag, created_at=time.time(),
                            expires_at=expires_at)
        os.replace(staged.path, self._data(file_id))
        record = self._stage_bytes(json.dumps(dataclasses.asdict(stored)).encode(),
                                   self.staging_dir)
        os.replace(record.path, self._meta(file_id))
        return stored

    def _place_part(self, folder: Path, part_number: int, staged: _Staged) -> str:
        # The etag is in the name, so a part re-sent with other bytes never mixes a new
        # body with an old etag: completion picks the exact (number, etag) listed.
        os.replace(staged.path, folder / f"{part_number}.{staged.etag}.part")
        return staged.etag

    def _stage_bytes(self, data: bytes, folder: Path) -> _Staged:
        path = _temp_path(folder)
        path.write_bytes(data)
        return _Staged(path, len(data), hashlib.md5(data, usedforsecurity=False).hexdigest())

    def _stage_path(self, source: Path, folder: Path, move: bool) -> _Staged:
        """``source`` under a temporary name in ``folder``: renamed there when ``move`` and
        on the same filesystem, else copied (and, with ``move``, then removed)."""
        path = _temp_path(folder)
        if move:
            size, etag = hash_file(source)
            try:
                os.replace(source, path)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            else:
                os.utime(path)  # its age now counts from here for the abandoned sweep
                return _Staged(path, size, etag)
        staged = self._stage_joined([source], folder)
        if move:
            source.unlink()
        return staged

    def _stage_joined(self, sources: list[Path], folder: Path | None = None) -> _Staged:
        """The concatenation of ``sources`` under a temporary name, hashed on the way."""
        path = _temp_path(folder or self.staging_dir)
        digest, size = hashlib.md5(usedforsecurity=False), 0
        try:
            with path.open("wb") as out:
                for source in sources:
                    with source.open("rb") as handle:
                        while chunk := handle.read(CHUNK_BYTES):
                            digest.update(chunk)
                            out.write(chunk)
                            size += len(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return _Staged(path, size, digest.hexdigest())


@contextmanager
def _upload_gone_as_not_found(folder: Path) -> Iterator[None]:
    """Writing into an upload completed (or swept) meanwhile is a NotFound."""
    try:
        yield
    except FileNotFoundError as exc:
        if folder.exists():
            raise
        raise NotFound(f"no upload {folder.name!r}") from exc


def _check_id(value: str) -> None:
    if not valid_id(value):
        raise NotFound(f"not a file id: {value!r}")


def _load_record(path: Path) -> StoredFile | None:
    """The StoredFile in a record file; None if it is missing (deleted meanwhile) or not
    one (never written by this class: records are replaced whole)."""
    try:
        return StoredFile(**json.loads(path.read_bytes()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _chosen_parts(folder: Path, parts: list[tuple[int, str]]) -> list[Path]:
    """The part files a completion lists, in part-number order."""
    uploaded: dict[int, set[str]] = {}
    for path in folder.glob("*.part"):
        number, etag = path.name.split(".")[:2]
        uploaded.setdefault(int(number), set()).add(etag)
    return [folder / f"{number}.{etag}.part" for number, etag in select_parts(parts, uploaded)]


def _temp_path(folder: Path) -> Path:
    return folder / f".tmp-{secrets.token_hex(8)}"


def _chunks(handle: BinaryIO, start: int, stop: int) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        remaining = stop - start
        while remaining > 0:
            chunk = handle.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

