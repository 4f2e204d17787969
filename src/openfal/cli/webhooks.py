"""``openfal webhooks``: a request's delivery log, redelivery, and signing-key rotation."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Any

import typer

from openfal.cli.client import _checked, connect, reports_errors
from openfal.cli.console import stdout as console
from openfal.cli.console import table
from openfal.cli.options import DEFAULT_DATA_DIR, DataDirOption, JsonOption, ServerOption
from openfal.cli.target import Target
from openfal.webhooks.signing import DEFAULT_RETIRE_AFTER_SECONDS

app = typer.Typer(help="Webhooks: delivery logs, redelivery and signing keys.",
                  no_args_is_help=True)
RequestIdArgument = Annotated[str, typer.Argument(help="The request's id.")]
STATE_STYLES = {"delivered": "green", "failed": "red", "pending": "yellow"}


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _outcome(attempt: dict[str, Any]) -> str:
    if attempt["finished_at"] is None:
        return "[yellow]under way[/yellow]"
    if attempt["error"] is None:
        return f"[green]HTTP {attempt['status_code']}[/green]"
    return f"[red]{attempt['error']}[/red]"


def print_webhook(webhook: dict[str, Any]) -> None:
    """The log as a person reads it: target and state, then one row per attempt."""
    state = webhook["state"]
    console.print(f"webhook of {webhook['request_id']} to {webhook['url']}: "
                  f"[{STATE_STYLES.get(state, '')}]{state}[/]")
    if webhook["next_attempt_at"] is not None:
        wait = max(0.0, webhook["next_attempt_at"] - time.time())
        console.print(f"next attempt at {_when(webhook['next_attempt_at'])} (in {wait:.0f} s)")
    if not webhook["attempts"]:
        console.print("no attempts yet")
        return
    attempts = table("attempt", "started", "duration", "outcome")
    for attempt in webhook["attempts"]:
        duration = attempt["duration"]
        attempts.add_row(str(attempt["attempt"]), _when(attempt["started_at"]),
                         "" if duration is None else f"{duration * 1000:.0f} ms",
                         _outcome(attempt))
    console.print(attempts)


def _print(webhook: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(webhook))
    else:
        print_webhook(webhook)


@reports_errors
def _show(target: Target, request_id: str, as_json: bool) -> int:
    with connect(target) as client:
        webhook = _checked(client.get(f"/api/requests/{request_id}/webhooks")).json()
    _print(webhook, as_json)
    return 0


@app.command()
def show(request_id: RequestIdArgument, server: ServerOption = None,
         data_dir: DataDirOption = DEFAULT_DATA_DIR, as_json: JsonOption = False) -> None:
    """Show a request's webhook: its target, state and every delivery attempt."""
    raise typer.Exit(_show(Target.find(server, data_dir), request_id, as_json))


@reports_errors
def _redeliver(target: Target, request_id: str, as_json: bool) -> int:
    with connect(target) as client:
        webhook = _checked(client.post(
            f"/api/requests/{request_id}/webhooks/redeliver")).json()
    if not as_json:
        console.print("redelivery queued")
    _print(webhook, as_json)
    return 0


@app.command()
def redeliver(request_id: RequestIdArgument, server: ServerOption = None,
              data_dir: DataDirOption = DEFAULT_DATA_DIR, as_json: JsonOption = False) -> None:
    """Deliver a finished request's webhook again now, with a fresh set of retries."""
    raise typer.Exit(_redeliver(Target.find(server, data_dir), request_id, as_json))


@reports_errors
def _rotate_key(target: Target, retire_after_hours: float) -> int:
    with connect(target) as client:
        rotated = _checked(client.post("/api/webhooks/rotate-key",
                                       json={"retire_after_hours": retire_after_hours})).json()
    console.print(f"new webhook signing key {rotated['kid']}")
    for published in rotated["keys"]:
        console.print(f"  published: {published['kid']}")
    return 0


@app.command("rotate-key")
def rotate_key(
    server: ServerOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    retire_after_hours: Annotated[float, typer.Option(
        help="How long the JWKS keeps publishing the previous keys.")]
        = DEFAULT_RETIRE_AFTER_SECONDS / 3600,
) -> None:
    """Add a new current signing key; the JWKS keeps publishing the previous ones a while.

    Every gateway of the server's store signs its next deliveries with the new key (no
    restart needed). Needs an ADMIN key."""
    raise typer.Exit(_rotate_key(Target.find(server, data_dir), retire_after_hours))
