"""Making ``import fal`` name openfal's compatibility modules, for one app only."""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

_COMPAT = "openfal.compat.fal"
# The SDK's module names an app may import, and the compatibility module that serves each.
MODULES = {
    "fal": _COMPAT,
    "fal.app": f"{_COMPAT}.app",
    "fal.exceptions": f"{_COMPAT}.exceptions",
    "fal.toolkit": f"{_COMPAT}.toolkit",
    **{f"fal.toolkit.{name}": f"{_COMPAT}.toolkit" for name in (
        "file", "file.file", "image", "image.image", "video", "video.video", "audio",
        "audio.audio", "utils", "utils.download_utils", "exceptions", "types")},
}


class SdkFeatureUnsupported(TypeError):
    """An app uses a part of the hosted SDK that openfal does not implement; raised while
    the app is loaded, so it never starts half-working."""


class _SdkFinder(importlib.abc.MetaPathFinder):
    """Finds ``fal`` and ``fal.*`` as openfal's compatibility modules (before any other
    finder, so an installed ``fal`` package is shadowed)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "fal" and not fullname.startswith("fal."):
            return None
        served_by = MODULES.get(fullname)
        if served_by is None:
            raise SdkFeatureUnsupported(
                f"{fullname} is not part of the SDK surface openfal supports "
                f"(docs/sdk-compat.md lists it)")
        return importlib.util.spec_from_loader(fullname, _Alias(served_by), is_package=True)


class _Alias(importlib.abc.Loader):
    def __init__(self, module_name: str):
        self.module_name = module_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.module_name)

    def exec_module(self, module: ModuleType) -> None:
        """Already executed when it was imported under its own name."""


_FINDER = _SdkFinder()


def _is_sdk_module(name: str) -> bool:
    return name == "fal" or name.startswith("fal.")


def install_sdk() -> None:
    """Make ``fal`` the compatibility layer in this process for good (an SDK app's
    runner): imports made later, inside ``setup()`` or an endpoint, resolve to it too."""
    for name in [name for name in sys.modules if _is_sdk_module(name)]:
        del sys.modules[name]
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


@contextlib.contextmanager
def sdk_imports() -> Iterator[None]:
    """``fal`` is the compatibility layer inside the block only: whatever ``fal`` modules
    the process had before (the real package, say) are back afterwards."""
    if _FINDER in sys.meta_path:  # a runner that installed it for good
        yield
        return
    saved = {name: module for name, module in sys.modules.items() if _is_sdk_module(name)}
    for name in saved:
        del sys.modules[name]
    sys.meta_path.insert(0, _FINDER)
    try:
        yield
    finally:
        sys.meta_path.remove(_FINDER)
        for name in [name for name in sys.modules if _is_sdk_module(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def uses_sdk(path: Path) -> bool:
    """Whether the Python file at ``path`` imports the hosted SDK (``fal``, ``fal.x``)."""
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (SyntaxError, ValueError):
        return False  # importing it reports the error properly
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(_is_sdk_module(alias.name)
                                                for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and _is_sdk_module(node.module):
            return True
    return False


def is_sdk_app(cls: type) -> bool:
    """Whether ``cls`` is an app written with the SDK (a ``fal.App`` subclass)."""
    from openfal.compat.fal.app import App as SdkApp

    return isinstance(cls, type) and issubclass(cls, SdkApp)
