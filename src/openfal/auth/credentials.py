"""Where the command line finds the API key it sends (one place for every command).

``OPENFAL_KEY`` when set, else the first ADMIN key ``openfal serve`` saved in the server's
data dir (``<data-dir>/admin.key``). Never ``FAL_KEY``: that is fal-client's variable, and
in most shells it holds a key for the hosted platform, which a local server refuses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KEY_VARIABLE = "OPENFAL_KEY"


@dataclass(frozen=True)
class FoundKey:
    secret: str
    source: str  # where it came from, for messages: "OPENFAL_KEY" or the key file's path


def find_key(data_dir: Path) -> FoundKey | None:
    """The key to send to the server that keeps its state in ``data_dir``; None if none."""
    if os.environ.get(KEY_VARIABLE):
        return FoundKey(os.environ[KEY_VARIABLE], KEY_VARIABLE)
    saved = data_dir / "admin.key"
    try:
        secret = saved.read_text().strip()
    except OSError:
        return None
    return FoundKey(secret, str(saved)) if secret else None


def authorization(key: str | None) -> dict[str, str]:
    return {"authorization": f"Key {key}"} if key else {}
