"""File storage: uploads from clients, outputs of runners, served back by URL."""

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
]
