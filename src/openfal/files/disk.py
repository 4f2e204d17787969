"""Local-disk helpers both stores use: hashing a file in chunks, sweeping stale entries."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

CHUNK_BYTES = 1024 * 1024


def hash_file(path: Path) -> tuple[int, str]:
    """The file's size and md5 hex, read in chunks."""
    digest, size = hashlib.md5(usedforsecurity=False), 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def sweep_stale(folder: Path, before: float) -> None:
    """Remove the entries of ``folder`` that have not changed since ``before``."""
    for entry in list(os.scandir(folder)):
        if unchanged_since(entry, before):
            remove(Path(entry.path))


def unchanged_since(entry: os.DirEntry[str], before: float) -> bool:
    try:
        return entry.stat(follow_symlinks=False).st_mtime < before
    except FileNotFoundError:
        return False


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
