"""Options several commands share."""

from __future__ import annotations

from typing import Annotated

import typer

DEFAULT_SERVER = "http://127.0.0.1:8000"
ServerOption = Annotated[str, typer.Option("--server", envvar="OPENFAL_SERVER",
                                           help="URL of the openfal server.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print compact JSON.")]
