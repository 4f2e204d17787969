"""Where the command line finds the API key it sends (one place for every command)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = Path.home() / ".openfal"


def find_key(data_dir: Path | None = None,
             variables: tuple[str, ...] = ("OPENFAL_KEY", "FAL_KEY")) -> str | None:
    """The first of ``variables`` that is set, else the first ADMIN key that ``openfal
    serve`` saved in the data dir (``<data-dir>/admin.key``); None if there is none."""
    for name in variables:
        if os.environ.get(name):
            return os.environ[name]
    saved = (data_dir or DEFAULT_DATA_DIR) / "admin.key"
    try:
        return saved.read_text().strip() or None
    except OSError:
        return None


def authorization(key: str | None) -> dict[str, str]:
    return {"authorization": f"Key {key}"} if key else {}
