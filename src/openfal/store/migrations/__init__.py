"""Each store's schema scripts, one folder per database: ``NNNN_name.sql``, applied in order
and never edited once released (a change is a new script)."""

from __future__ import annotations

from importlib.resources.abc import Traversable


def migrations(folder: Traversable) -> list[tuple[int, str]]:
    """The numbered ``NNNN_name.sql`` scripts of a folder, in order."""
    found = [(int(entry.name.split("_", 1)[0]), entry.read_text())
             for entry in folder.iterdir() if entry.name.endswith(".sql")]
    return sorted(found)
