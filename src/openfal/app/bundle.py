"""An app's code as one file: what ``openfal deploy`` uploads and workers unpack.

A bundle is a gzipped tar of the app's file, the modules it names in
``local_python_modules`` and the files it names in ``app_files``, laid out as they sit
beside the app file. It is built deterministically (sorted, no timestamps or owners), so the
same code gives the same digest. Unpacking refuses absolute paths, ``..``, links and special
files (tarfile's ``data`` filter) and bundles that grow past a bound.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import shutil
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from openfal.app.loader import load_app
from openfal.errors import ConfigError

MAX_BUNDLE_BYTES = 64 * 1024 * 1024  # as uploaded (gzipped)
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
MAX_MEMBERS = 20_000
_SKIPPED = {"__pycache__", ".git", ".DS_Store"}
COMPLETE_MARKER = ".openfal-complete"


class BundleError(ConfigError):
    """A bundle that cannot be built or unpacked; the message is one line."""


@dataclass(frozen=True)
class Bundle:
    data: bytes
    ref: str  # "file.py::Class", relative to the bundle's root


def make_bundle(ref: str) -> Bundle:
    """Bundle the app ``ref`` (``path/to/app.py::Class``) names, with what it ships."""
    target, _, class_name = ref.rpartition("::")
    if not target.endswith(".py"):
        raise BundleError(f"{ref}: deploy takes an app file, 'path/to/app.py::ClassName'")
    cls = load_app(ref)
    app_file = Path(target).resolve()
    root = app_file.parent
    files = {app_file.name: app_file}
    for name in cls.local_python_modules:
        files.update(_module_files(name, root))
    for entry in cls.app_files:
        files.update(_app_files(entry, root))
    return Bundle(_tar(files), f"{app_file.name}::{class_name}")


def _module_files(name: str, root: Path) -> dict[str, Path]:
    """The files of module ``name`` (found beside the app first), by their bundle path."""
    sys.path.insert(0, str(root))
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    finally:
        sys.path.remove(str(root))
    if spec is None or spec.origin is None or not spec.has_location:
        raise BundleError(f"local_python_modules: no module {name!r} beside the app file")
    if spec.submodule_search_locations:
        package = Path(next(iter(spec.submodule_search_locations)))
        return {f"{package.name}/{path.relative_to(package)}": path
                for path in _walk(package)}
    origin = Path(spec.origin)
    return {origin.name: origin}


def _app_files(entry: str, root: Path) -> dict[str, Path]:
    path = (root / entry).resolve()
    if not path.is_relative_to(root):
        raise BundleError(f"app_files: {entry!r} is outside the app's folder {root}")
    if not path.exists():
        raise BundleError(f"app_files: {entry!r} does not exist in {root}")
    paths = _walk(path) if path.is_dir() else [path]
    return {str(item.relative_to(root)): item for item in paths}


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(name for name in dirnames if name not in _SKIPPED)
        for name in sorted(filenames):
            if name not in _SKIPPED and not name.endswith(".pyc"):
                yield Path(dirpath) / name


def _tar(files: dict[str, Path]) -> bytes:
    buffer = io.BytesIO()
    # mtime=0 in the gzip header too: the same files, the same bytes.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed, \
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data = files[name].read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"the bundle is {len(data)} bytes, over the "
                          f"{MAX_BUNDLE_BYTES} a deploy takes")
    return data


def unpack(data: bytes, dest: Path) -> None:
    """Unpack a bundle into ``dest`` (made; it must not exist), all or nothing: a folder
    marked complete is a whole bundle."""
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    partial.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            _check_members(tar)
            tar.extractall(partial, filter="data")
        (partial / COMPLETE_MARKER).touch()
        partial.rename(dest)
    except (tarfile.TarError, OSError, EOFError) as exc:
        _remove(partial)
        if isinstance(exc, OSError) and dest.exists():
            return  # another process unpacked the same bundle first
        raise BundleError(f"not a valid app bundle: {exc}") from None
    except BundleError:
        _remove(partial)
        raise


def _check_members(tar: tarfile.TarFile) -> None:
    total = 0
    for count, member in enumerate(tar, start=1):
        total += member.size
        if count > MAX_MEMBERS or total > MAX_UNPACKED_BYTES:
            raise BundleError(f"the bundle unpacks to more than {MAX_MEMBERS} files or "
                              f"{MAX_UNPACKED_BYTES} bytes")


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
