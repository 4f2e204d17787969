"""Options several commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DATA_DIR_VARIABLE = "OPENFAL_DATA_DIR"
DEFAULT_DATA_DIR = Path.home() / ".openfal"

ServerOption = Annotated[str | None, typer.Option(
    "--server", envvar="OPENFAL_SERVER", show_default=False,
    help="URL of the openfal server (default: the one running on --data-dir, else "
    "http://127.0.0.1:8000).")]
DataDirOption = Annotated[Path, typer.Option(
    "--data-dir", envvar=DATA_DIR_VARIABLE,
    help="The server's data dir: its server.json says where it listens, its admin.key is "
    "the key sent unless OPENFAL_KEY is set (FAL_KEY never is).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print compact JSON.")]
StoreOption = Annotated[str | None, typer.Option(
    "--store", envvar="OPENFAL_STORE", show_default=False,
    help="Where requests, keys and webhooks live: postgresql://user:pass@host:port/db, "
    "shared by several gateways (default: SQLite in DATA_DIR).")]
