"""``fal.toolkit``: the SDK's media types and download helpers on openfal's.

``File``/``Image``/``Video``/``Audio`` are openfal's media models (same JSON shape) with the
SDK's methods: outputs are stored in the server's file storage (``repository="in_memory"``
inlines them as data URIs instead); inputs are fetched when the app asks for their content
(``to_pil``, ``as_bytes``, ``save``), through openfal's fetcher, which refuses private
networks unless the server allows them.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
import secrets
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from pydantic import Field

from openfal.app import media
from openfal.app.inputs import fetch_file
from openfal.compat.imports import SdkFeatureUnsupported
from openfal.fetch import FetchError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

# Where relative ``download_file`` targets go (the hosted platform's persistent /data).
FAL_PERSISTENT_DIR = Path(os.environ.get("OPENFAL_PERSISTENT_DIR")
                          or Path.home() / ".cache" / "openfal" / "data")
FAL_MODEL_WEIGHTS_DIR = FAL_PERSISTENT_DIR / ".fal" / "model_weights"
FAL_REPOSITORY_DIR = FAL_PERSISTENT_DIR / ".fal" / "repos"
_MEGABYTE = 1024 ** 2
_IN_MEMORY = "in_memory"  # the SDK's repository that returns data URIs


class DownloadError(Exception):
    pass


class _SdkFileMethods:
    """What the SDK's ``File`` offers beyond openfal's (mixed into each media type)."""

    url: str
    _path: Path | None

    @classmethod
    def _store(cls, data: bytes, content_type: str | None, file_name: str | None,
               repository: Any, **fields: Any) -> Self:
        inline = True if repository == _IN_MEMORY else None
        if file_name is None:  # named as the SDK names them: at random, by content type
            extension = mimetypes.guess_extension(content_type or "") or ""
            file_name = f"{secrets.token_urlsafe(12)}{extension}"
        return media.File.from_bytes.__func__(cls, data, content_type, file_name,  # type: ignore[attr-defined]
                                              inline=inline, **fields)

    @classmethod
    def from_bytes(cls, data: bytes, content_type: str | None = None,
                   file_name: str | None = None, repository: Any = None,
                   **_storage_options: Any) -> Self:
        return cls._store(data, content_type, file_name, repository)

    @classmethod
    def from_path(cls, path: str | Path, content_type: str | None = None,
                  repository: Any = None, **_storage_options: Any) -> Self:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"File {path} does not exist")
        content_type = content_type or mimetypes.guess_type(path.name)[0]
        return cls._store(path.read_bytes(), content_type, path.name, repository)

    @contextmanager
    def _local_copy(self) -> Iterator[Path]:
        if self._path is not None:
            yield self._path
            return
        with tempfile.TemporaryDirectory(prefix="openfal-file-") as scratch:
            path = Path(scratch) / "file"
            try:
                fetch_file(self.url, path)
            except FetchError as exc:
                raise DownloadError(f"could not fetch {self.url[:200]}: {exc}") from None
            yield path

    def as_bytes(self) -> bytes:
        with self._local_copy() as path:
            return path.read_bytes()

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        target = Path(path).resolve()
        if target.exists() and not overwrite:
            raise FileExistsError(f"File {target} already exists")
        with self._local_copy() as source:
            shutil.copyfile(source, target)
        return target


class File(_SdkFileMethods, media.File):
    pass


class Image(_SdkFileMethods, media.Image):
    model_config = {"json_schema_extra": {"ui": {"field": "image"}}}

    @classmethod
    def from_bytes(cls, data: bytes, format: str = "png",  # type: ignore[override]
                   size: Any = None, file_name: str | None = None, repository: Any = None,
                   **_storage_options: Any) -> Self:
        width, height = (size.width, size.height) if size is not None else (None, None)
        return cls._store(data, f"image/{format}", file_name, repository,
                          width=width, height=height)

    @classmethod
    def from_pil(cls, pil_image: PILImage, format: str | None = None,  # type: ignore[override]
                 file_name: str | None = None, repository: Any = None,
                 **_storage_options: Any) -> Self:
        format = (format or pil_image.format or "png").lower()
        options = {"png": {"compress_level": 1}, "jpeg": {"quality": 95}}.get(format, {})
        with io.BytesIO() as buffer:
            pil_image.save(buffer, format=format, **options)
            data = buffer.getvalue()
        return cls._store(data, f"image/{format}", file_name, repository,
                          width=pil_image.width, height=pil_image.height)

    def to_pil(self, mode: str = "RGB") -> PILImage:
        from PIL import Image as PIL
        from PIL import ImageOps

        with self._local_copy() as path, PIL.open(path) as opened:
            return ImageOps.exif_transpose(opened).convert(mode)


class Video(_SdkFileMethods, media.Video):
    model_config = {"json_schema_extra": {"ui": {"field": "video"}}}


class Audio(_SdkFileMethods, media.Audio):
    model_config = {"json_schema_extra": {"ui": {"field": "audio"}}}


def download_file(url: str, target_dir: str | Path, *, force: bool = False,
                  request_headers: dict[str, str] | None = None,
                  filesize_limit: int | None = None) -> Path:
    """Download ``url`` (a URL, a data URI or this server's file) into ``target_dir`` (under
    :data:`FAL_PERSISTENT_DIR` when relative) and return its path. A file already there
    with the same name is kept unless ``force``; ``filesize_limit`` is in megabytes."""
    if request_headers:
        raise SdkFeatureUnsupported("download_file(request_headers=...) is not supported "
                                    "by openfal: the fetcher sends no caller headers")
    target = FAL_PERSISTENT_DIR / target_dir if not Path(target_dir).is_absolute() \
        else Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    path = target / _file_name(url)
    if path.exists() and not force:
        return path
    partial = path.with_name(f".{path.name}.part")
    limit = None if filesize_limit is None else filesize_limit * _MEGABYTE
    try:
        content_type = fetch_file(url, partial, limit)
    except FetchError as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"could not download {url[:200]}: {exc}") from None
    if not path.suffix and (extension := mimetypes.guess_extension(content_type or "")):
        path = path.with_suffix(extension)
    partial.replace(path)
    return path


def _file_name(url: str) -> str:
    """The URL's last path segment, or (data URIs, bare hosts) a name derived from it."""
    if not url.startswith("data:"):
        name = Path(urllib.parse.urlsplit(url).path).name
        if name:
            return name
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def download_model_weights(url: str, force: bool = False,
                           request_headers: dict[str, str] | None = None) -> Path:
    """Download weights once into :data:`FAL_MODEL_WEIGHTS_DIR` (a folder per URL)."""
    folder = FAL_MODEL_WEIGHTS_DIR / hashlib.sha256(url.encode()).hexdigest()
    return download_file(url, folder, force=force, request_headers=request_headers)


def _unsupported(name: str) -> Any:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise SdkFeatureUnsupported(f"fal.toolkit.{name} is not supported by openfal")

    refuse.__name__ = name
    return refuse


clone_repository = _unsupported("clone_repository")

__all__ = ["FAL_MODEL_WEIGHTS_DIR", "FAL_PERSISTENT_DIR", "FAL_REPOSITORY_DIR", "Audio",
           "DownloadError", "Field", "File", "Image", "Video", "clone_repository",
           "download_file", "download_model_weights"]
