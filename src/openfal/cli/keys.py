"""``openfal keys`` and ``openfal usage``: the admin API from the command line. They send
the key the CLI finds (``OPENFAL_KEY``, else the data dir's first admin key)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from openfal.cli.client import _checked, connect, reports_errors
from openfal.cli.console import stdout, table
from openfal.cli.options import DEFAULT_DATA_DIR, DataDirOption, JsonOption, ServerOption
from openfal.cli.target import Target

app = typer.Typer(help="API keys: create, list, limit and revoke them (needs an ADMIN key).",
                  no_args_is_help=True)

NO_UNITS = "-"
UNITS_NOTE = (f"billable units: what the apps report (an endpoint sets "
              f"self.current_request.billable_units); {NO_UNITS}: none reported, which is "
              f"the case for apps that do not set it, the built-in ones included")


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


@reports_errors
def _create(target: Target, scope: str, name: str, max_concurrency: int | None) -> int:
    body = {"scope": scope, "name": name, "max_concurrency": max_concurrency}
    with connect(target) as client:
        created = _checked(client.post("/api/keys", json=body)).json()
    stdout.print(f"created a new {created['scope']} key (shown once):")
    print(created["key"])
    return 0


@app.command()
def create(
    scope: Annotated[str, typer.Option(help="API (run endpoints, see its own requests) "
                                       "or ADMIN.")] = "API",
    name: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
    max_concurrency: Annotated[int | None, typer.Option(
        help="Running requests it may have at once (default: the server's).")] = None,
    server: ServerOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Create a key and print it (``id:secret``) once."""
    raise typer.Exit(_create(Target.find(server, data_dir), scope.upper(), name,
                             max_concurrency))


@reports_errors
def _list(target: Target, as_json: bool) -> int:
    with connect(target) as client:
        listing = _checked(client.get("/api/keys")).json()
    if as_json:
        print(json.dumps(listing))
        return 0
    keys = table("key id", "scope", "name", "concurrency", "created", "revoked")
    for key in listing["keys"]:
        keys.add_row(key["id"], key["scope"], key["name"], str(key["max_concurrency"] or ""),
                     _when(key["created_at"]), _when(key["revoked_at"]))
    stdout.print(keys)
    return 0


@app.command("list")
def list_keys(server: ServerOption = None, data_dir: DataDirOption = DEFAULT_DATA_DIR,
              as_json: JsonOption = False) -> None:
    """List keys (never their secrets)."""
    raise typer.Exit(_list(Target.find(server, data_dir), as_json))


@reports_errors
def _revoke(target: Target, key_id: str) -> int:
    with connect(target) as client:
        _checked(client.delete(f"/api/keys/{key_id}"))
    stdout.print(f"revoked {key_id}")
    return 0


@app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id.")],
           server: ServerOption = None, data_dir: DataDirOption = DEFAULT_DATA_DIR) -> None:
    """Revoke a key: it stops working at once."""
    raise typer.Exit(_revoke(Target.find(server, data_dir), key_id))


@reports_errors
def _set_limit(target: Target, key_id: str, limit: int) -> int:
    with connect(target) as client:
        _checked(client.patch(f"/api/keys/{key_id}",
                              json={"max_concurrency": limit or None}))
    stdout.print(f"{key_id}: {limit or 'the server default'} running requests at most")
    return 0


@app.command("set-limit")
def set_limit(key_id: Annotated[str, typer.Argument(help="The key's id.")],
              max_concurrency: Annotated[int, typer.Argument(
                  help="Running requests at once (0: the server's default).")],
              server: ServerOption = None,
              data_dir: DataDirOption = DEFAULT_DATA_DIR) -> None:
    """Set how many requests a key may have running at once."""
    raise typer.Exit(_set_limit(Target.find(server, data_dir), key_id, max_concurrency))


@reports_errors
def _usage(target: Target, days: float, as_json: bool) -> int:
    now = time.time()
    with connect(target) as client:
        report = _checked(client.get("/api/usage", params={
            "since": now - days * 86400, "until": now + 1})).json()
    if as_json:
        print(json.dumps(report))
        return 0
    usage_table = table("key id", "endpoint", "requests", "failed", "queue s", "run s",
                        "attempts", "billable units")
    for row in report["usage"]:
        usage_table.add_row(row["key_id"] or "(anonymous)", row["endpoint_id"],
                            str(row["requests"]), str(row["failed"]),
                            f"{row['queue_seconds']:.2f}", f"{row['run_seconds']:.2f}",
                            str(row["attempts"]), _units(row))
    stdout.print(usage_table)
    if any(_units(row) == NO_UNITS for row in report["usage"]):
        stdout.print(UNITS_NOTE, style="dim")
    return 0


def _units(row: dict[str, Any]) -> str:
    # The ledger sums what apps report, so 0 is what an app that reports nothing shows.
    return f"{row['billable_units']:g}" if row["billable_units"] else NO_UNITS


def usage(days: Annotated[float, typer.Option(help="How far back, in days.")] = 30,
          server: ServerOption = None, data_dir: DataDirOption = DEFAULT_DATA_DIR,
          as_json: JsonOption = False) -> None:
    """Usage by key and endpoint: requests, failures, queue and run time, billable units.

    Billable units are what the apps report; "-" marks none reported."""
    if days <= 0:
        raise typer.BadParameter("must be positive", param_hint="--days")
    raise typer.Exit(_usage(Target.find(server, data_dir), days, as_json))
