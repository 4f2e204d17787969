"""Find an App class from a reference: ``path/to/file.py::ClassName`` or ``module::ClassName``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from openfal.app.app import App


class AppLoadError(Exception):
    pass


def load_app(ref: str) -> type[App]:
    target, sep, class_name = ref.rpartition("::")
    if not sep or not target or not class_name:
        raise AppLoadError(f"app reference {ref!r} must look like 'file.py::ClassName'")
    module = _import_file(Path(target)) if target.endswith(".py") else _import_module(target)
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, App)):
        raise AppLoadError(f"{ref}: {class_name!r} is not an openfal.App subclass")
    if not cls.endpoints():
        raise AppLoadError(f"{ref}: the app has no @openfal.endpoint methods")
    return cls


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise AppLoadError(f"cannot import module {name!r}: {exc}") from exc


def _import_file(path: Path):
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
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise AppLoadError(f"importing {path} failed: {exc!r}") from exc
    return module
