"""Find an App class from a reference: ``path/to/file.py::ClassName`` or ``module::ClassName``."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from openfal.app.app import App
from openfal.compat import sdk_imports, uses_sdk
from openfal.errors import ConfigError


class AppLoadError(ConfigError):
    """An ``--app`` that cannot be served; the message is one line."""


def load_app(ref: str) -> type[App]:
    target, sep, class_name = ref.rpartition("::")
    if not sep or not target or not class_name:
        raise AppLoadError(f"app reference {ref!r} must look like 'file.py::ClassName'")
    module = _import_file(Path(target)) if target.endswith(".py") else _import_module(target)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise AppLoadError(f"{ref}: {target} has no {class_name!r}"
                           f"{_candidates(module)}")
    if not (isinstance(cls, type) and issubclass(cls, App)):
        raise AppLoadError(f"{ref}: {class_name!r} is not an openfal.App (or fal.App) subclass"
                           f"{_candidates(module)}")
    if not cls.endpoints():
        raise AppLoadError(f"{ref}: the app has no @openfal.endpoint methods")
    return cls


def _candidates(module: ModuleType) -> str:
    """``" (its apps: A, B)"``: the App classes ``module`` does have, if any."""
    names = sorted(name for name, value in vars(module).items()
                   if isinstance(value, type) and issubclass(value, App) and value is not App
                   and value.endpoints())
    return f" (its apps: {', '.join(names)})" if names else ""


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise AppLoadError(f"importing module {name!r} failed: {_last_line(exc)}") from exc


def _import_file(path: Path) -> ModuleType:
    path = path.resolve()
    if not path.is_file():
        raise AppLoadError(f"app file {path} does not exist")
    module_name = f"openfal_user_{path.stem}_{abs(hash(str(path))):x}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # Let the app import modules that sit beside it.
    sys.path.insert(0, str(path.parent))
    try:
        with sdk_imports() if uses_sdk(path) else contextlib.nullcontext():
            spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise AppLoadError(f"importing {path} failed{_line_in(path, exc)}: "
                           f"{_last_line(exc)}") from exc
    return module


def _last_line(exc: BaseException) -> str:
    """What a traceback's last line says, e.g. ``ModuleNotFoundError: No module named 'x'``,
    on one line."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _line_in(path: Path, exc: BaseException) -> str:
    """`` at line N``: the deepest place in ``path`` that the failure passed through."""
    if isinstance(exc, SyntaxError) and exc.filename == str(path) and exc.lineno:
        return f" at line {exc.lineno}"
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__)
             if frame.filename == str(path)]
    return f" at line {lines[-1]}" if lines else ""
