"""File storage: uploads from clients, outputs of runners, served back by URL."""

from __future__ import annotations

import re
from pathlib import Path

from openfal.errors import ConfigError
from openfal.files.base import (
    FileStorage,
    FileTooLarge,
    InvalidParts,
    MultipartUpload,
    NotFound,
    StorageError,
    StoredFile,
)
from openfal.files.local import LocalFileStorage

__all__ = [
    "FileStorage",
    "FileTooLarge",
    "InvalidParts",
    "LocalFileStorage",
    "MultipartUpload",
    "NotFound",
    "StorageError",
    "StoredFile",
    "open_file_storage",
]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: C:\ is a path


def open_file_storage(spec: str | None, data_dir: Path) -> FileStorage:
    """The store ``spec`` names: None for ``<data_dir>/files``, a local folder, or
    ``s3://bucket[/prefix]`` (staging on ``<data_dir>/staging``; boto3 is imported only
    then, as it comes with the ``s3`` extra)."""
    if spec is None:
        return LocalFileStorage(data_dir / "files")
    scheme = _SCHEME.match(spec)
    if scheme is None:
        return LocalFileStorage(Path(spec))
    if scheme[1].lower() != "s3":
        raise ConfigError(f"unsupported file storage {spec!r}: a local folder or "
                          "s3://bucket[/prefix]")
    try:
        from openfal.files.s3 import S3FileStorage
    except ModuleNotFoundError as exc:
        raise ConfigError(f"s3:// file storage needs {exc.name}: "
                          "pip install 'openfal[s3]'") from None
    return S3FileStorage.from_url(spec, staging_dir=data_dir / "staging")
