"""``openfal keys`` and ``openfal usage``: the admin API from the command line. They send
the key the CLI finds (``OPENFAL_KEY``, ``FAL_KEY`` or the data dir's first admin key)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from openfal.cli.client import _checked, connect, reports_errors
from openfal.cli.options import DEFAULT_SERVER, JsonOption, ServerOption

app = typer.Typer(help="API keys: create, list, limit and revoke them (needs an ADMIN key).",
                  no_args_is_help=True)
console = Console()


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


@reports_errors
def _create(server: str, scope: str, name: str, max_concurrency: int | None) -> int:
    body = {"scope": scope, "name": name, "max_concurrency": max_concurrency}
    with connect(server) as client:
        created = _checked(client.post("/api/keys", json=body)).json()
    console.print(f"created a {created['scope']} key (shown once):", highlight=False)
    print(created["key"])
    return 0


@app.command()
def create(
    scope: Annotated[str, typer.Option(help="API (run endpoints, see its own requests) "
                                       "or ADMIN.")] = "API",
    name: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
    max_concurrency: Annotated[int | None, typer.Option(
        help="Running requests it may have at once (default: the server's).")] = None,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Create a key and print it (``id:secret``) once."""
    raise typer.Exit(_create(server.rstrip("/"), scope.upper(), name, max_concurrency))


@reports_errors
def _list(server: str, as_json: bool) -> int:
    with connect(server) as client:
        listing = _checked(client.get("/api/keys")).json()
    if as_json:
        print(json.dumps(listing))
        return 0
    table = Table("key id", "scope", "name", "concurrency", "created", "revoked")
    for key in listing["keys"]:
        table.add_row(key["id"], key["scope"], key["name"], str(key["max_concurrency"] or ""),
                      _when(key["created_at"]), _when(key["revoked_at"]))
    console.print(table)
    return 0


@app.command("list")
def list_keys(server: ServerOption = DEFAULT_SERVER, as_json: JsonOption = False) -> None:
    """List keys (never their secrets)."""
    raise typer.Exit(_list(server.rstrip("/"), as_json))


@reports_errors
def _revoke(server: str, key_id: str) -> int:
    with connect(server) as client:
        _checked(client.delete(f"/api/keys/{key_id}"))
    console.print(f"revoked {key_id}", highlight=False)
    return 0


@app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id.")],
           server: ServerOption = DEFAULT_SERVER) -> None:
    """Revoke a key: it stops working at once."""
    raise typer.Exit(_revoke(server.rstrip("/"), key_id))


@reports_errors
def _set_limit(server: str, key_id: str, limit: int) -> int:
    with connect(server) as client:
        _checked(client.patch(f"/api/keys/{key_id}",
                              json={"max_concurrency": limit or None}))
    console.print(f"{key_id}: {limit or 'the server default'} running requests at most",
                  highlight=False)
    return 0


@app.command("set-limit")
def set_limit(key_id: Annotated[str, typer.Argument(help="The key's id.")],
              max_concurrency: Annotated[int, typer.Argument(
                  help="Running requests at once (0: the server's default).")],
              server: ServerOption = DEFAULT_SERVER) -> None:
    """Set how many requests a key may have running at once."""
    raise typer.Exit(_set_limit(server.rstrip("/"), key_id, max_concurrency))


@reports_errors
def _usage(server: str, days: float, as_json: bool) -> int:
    now = time.time()
    with connect(server) as client:
        report = _checked(client.get("/api/usage", params={
            "since": now - days * 86400, "until": now + 1})).json()
    if as_json:
        print(json.dumps(report))
        return 0
    table = Table("key id", "endpoint", "requests", "failed", "queue s", "run s", "attempts",
                  "billable units")
    for row in report["usage"]:
        table.add_row(row["key_id"] or "(anonymous)", row["endpoint_id"], str(row["requests"]),
                      str(row["failed"]), f"{row['queue_seconds']:.2f}",
                      f"{row['run_seconds']:.2f}", str(row["attempts"]),
                      f"{row['billable_units']:g}")
    console.print(table)
    return 0


def usage(days: Annotated[float, typer.Option(help="How far back, in days.")] = 30,
          server: ServerOption = DEFAULT_SERVER, as_json: JsonOption = False) -> None:
    """Usage by key and endpoint: requests, failures, queue and run time, billable units."""
    if days <= 0:
        raise typer.BadParameter("must be positive", param_hint="--days")
    raise typer.Exit(_usage(server.rstrip("/"), days, as_json))
