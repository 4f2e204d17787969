"""``openfal secrets``: values apps get as environment variables (needs an ADMIN key).

A value is read from standard input, never from the command line, where other users of the
host may see it and the shell's history keeps it. No command ever prints a value."""

from __future__ import annotations

import getpass
import json
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer

from openfal.cli.client import _checked, connect, reports_errors
from openfal.cli.console import stdout, table
from openfal.cli.options import DEFAULT_DATA_DIR, DataDirOption, JsonOption, ServerOption
from openfal.cli.target import Target

app = typer.Typer(help="App secrets: values runners get as environment variables (needs an "
                  "ADMIN key).", no_args_is_help=True)
NameArgument = Annotated[str, typer.Argument(
    help="An environment variable name (A-Z, 0-9, _), e.g. HF_TOKEN.")]


def _read_value() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("value (not shown): ")
    # `echo value | openfal secrets set NAME` sends the newline too: it is not the value's.
    return sys.stdin.read().removesuffix("\n")


@reports_errors
def _set(target: Target, name: str, value: str) -> int:
    with connect(target) as client:
        _checked(client.put(f"/api/secrets/{name}", json={"value": value}))
    stdout.print(f"set {name}: runners started from now on get it")
    return 0


@app.command("set")
def set_secret(name: NameArgument, server: ServerOption = None,
               data_dir: DataDirOption = DEFAULT_DATA_DIR) -> None:
    """Set a secret to the value read from standard input (a prompt on a terminal)."""
    raise typer.Exit(_set(Target.find(server, data_dir), name, _read_value()))


@reports_errors
def _list(target: Target, as_json: bool) -> int:
    with connect(target) as client:
        listing = _checked(client.get("/api/secrets")).json()
    if as_json:
        print(json.dumps(listing))
        return 0
    secrets = table("name", "last set")
    for secret in listing["secrets"]:
        set_at = datetime.fromtimestamp(secret["updated_at"], UTC)
        secrets.add_row(secret["name"], set_at.strftime("%Y-%m-%d %H:%M:%S UTC"))
    stdout.print(secrets)
    return 0


@app.command("list")
def list_secrets(server: ServerOption = None, data_dir: DataDirOption = DEFAULT_DATA_DIR,
                 as_json: JsonOption = False) -> None:
    """List the secrets' names and when each was last set (never their values)."""
    raise typer.Exit(_list(Target.find(server, data_dir), as_json))


@reports_errors
def _unset(target: Target, name: str) -> int:
    with connect(target) as client:
        _checked(client.delete(f"/api/secrets/{name}"))
    stdout.print(f"unset {name}")
    return 0


@app.command()
def unset(name: NameArgument, server: ServerOption = None,
          data_dir: DataDirOption = DEFAULT_DATA_DIR) -> None:
    """Remove a secret (runners already started keep what they got)."""
    raise typer.Exit(_unset(Target.find(server, data_dir), name))
