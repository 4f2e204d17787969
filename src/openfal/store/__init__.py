"""Where the platform keeps its state: the embedded SQLite store, or PostgreSQL shared by
several gateways."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from openfal.errors import ConfigError
from openfal.store.base import Store
from openfal.store.sqlite import SQLiteStore

DURABILITIES = ("normal", "full")


def open_store(url: str | None, data_dir: Path, durability: str = "normal") -> Store:
    """The store a URL names, not opened yet.

    - None: SQLite in ``<data_dir>/openfal.db``;
    - ``sqlite:///path/to/file.db``: SQLite in that file (a relative path, as in
      ``sqlite://openfal.db``, is relative to ``data_dir``);
    - ``postgresql://user:password@host:port/database`` (or ``postgres://``): PostgreSQL,
      which needs the ``postgres`` extra (asyncpg).

    ``durability`` is SQLite's (``full``: every commit waits for fsync); PostgreSQL's is the
    server's own setting (``synchronous_commit``).
    """
    if durability not in DURABILITIES:
        raise ConfigError(f"unknown durability {durability!r}: use one of "
                          f"{', '.join(DURABILITIES)}")
    if url is None:
        return SQLiteStore(data_dir / "openfal.db", durability)
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        return SQLiteStore(data_dir / (unquote(rest) or "openfal.db"), durability)
    if scheme in ("postgresql", "postgres"):
        return _postgres(url)
    raise ConfigError("the store URL must start with sqlite:// or postgresql:// "
                      f"(got {scheme + '://' if rest else 'no scheme'})")


def _postgres(url: str) -> Store:
    try:
        from openfal.store.postgres import PostgresStore
    except ModuleNotFoundError as exc:
        if exc.name != "asyncpg":
            raise
        raise ConfigError("a postgresql:// store needs asyncpg: "
                          "pip install 'openfal[postgres]'") from None
    return PostgresStore(url)
