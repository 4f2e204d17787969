"""``openfal deploy`` and ``openfal apps``: apps added to a running server (ADMIN key).

``openfal deploy app.py::MyApp`` bundles the app's file with its ``local_python_modules``
and ``app_files`` (app/bundle.py) and uploads it; the server serves it at once, or rolls out
a new revision of it. ``openfal apps`` lists what is served; its subcommands show, roll back
and delete deployed apps.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from openfal.app.bundle import make_bundle
from openfal.cli.client import CLIError, _checked, apps_command, connect, reports_errors
from openfal.cli.console import stdout, table
from openfal.cli.options import DEFAULT_DATA_DIR, DataDirOption, JsonOption, ServerOption
from openfal.cli.target import Target
from openfal.errors import ConfigError

AppArgument = Annotated[str, typer.Argument(help="The deployed app, 'owner/name'.")]
DEPLOY_TIMEOUT = 300.0  # the server loads the app before it answers


@reports_errors
def _deploy(target: Target, ref: str, name: str | None, as_json: bool) -> int:
    try:
        bundle = make_bundle(ref)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    params = {"ref": bundle.ref, **({"name": name} if name else {})}
    with connect(target) as client:
        deployed = _checked(client.post(
            "/api/deployments", params=params, content=bundle.data, timeout=DEPLOY_TIMEOUT,
            headers={"content-type": "application/gzip"})).json()
    if as_json:
        print(json.dumps(deployed))
        return 0
    stdout.print(f"deployed {deployed['app_id']} revision {deployed['revision']} "
                 f"({deployed['size']} bytes): new requests run on it")
    for url in deployed["endpoints"]:
        stdout.print(f"  {url}")
    return 0


def deploy(
    app_ref: Annotated[str, typer.Argument(metavar="APP", help="path/to/app.py::ClassName")],
    name: Annotated[str | None, typer.Option(
        help="Deploy as 'owner/name' (default: the server's owner and the app's name).")
    ] = None,
    server: ServerOption = None, data_dir: DataDirOption = DEFAULT_DATA_DIR,
    as_json: JsonOption = False,
) -> None:
    """Upload an app to a running server, which serves it at once (a new revision of it:
    new requests run on it, running ones finish on the old)."""
    raise typer.Exit(_deploy(Target.find(server, data_dir), app_ref, name, as_json))


app = typer.Typer(help="The apps a server serves; deployed apps' revisions (ADMIN key).",
                  invoke_without_command=True)


@app.callback()
def apps(ctx: typer.Context, server: ServerOption = None,
         data_dir: DataDirOption = DEFAULT_DATA_DIR, as_json: JsonOption = False) -> None:
    """List the endpoints the server serves (or run one of the commands below)."""
    if ctx.invoked_subcommand is None:
        raise typer.Exit(apps_command(Target.find(server, data_dir), as_json))


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@reports_errors
def _revisions(target: Target, app_id: str, as_json: bool) -> int:
    with connect(target) as client:
        listing = _checked(client.get(f"/api/deployments/{app_id}")).json()
    if as_json:
        print(json.dumps(listing))
        return 0
    revisions = table("revision", "deployed", "ref", "bytes", "digest")
    for revision in listing["revisions"]:
        mark = " (current)" if revision["revision"] == listing["current"] else ""
        revisions.add_row(f"{revision['revision']}{mark}", _when(revision["created_at"]),
                          revision["ref"], str(revision["size"]), revision["digest"][:12])
    stdout.print(revisions)
    return 0


@app.command()
def revisions(app_id: AppArgument, server: ServerOption = None,
              data_dir: DataDirOption = DEFAULT_DATA_DIR, as_json: JsonOption = False) -> None:
    """List a deployed app's revisions."""
    raise typer.Exit(_revisions(Target.find(server, data_dir), app_id, as_json))


@reports_errors
def _rollback(target: Target, app_id: str, revision: int) -> int:
    with connect(target) as client:
        _checked(client.post(f"/api/deployments/{app_id}/rollback",
                             json={"revision": revision}, timeout=DEPLOY_TIMEOUT))
    stdout.print(f"{app_id}: revision {revision} is current; new requests run on it")
    return 0


@app.command()
def rollback(app_id: AppArgument,
             revision: Annotated[int, typer.Argument(help="The revision to make current.")],
             server: ServerOption = None, data_dir: DataDirOption = DEFAULT_DATA_DIR) -> None:
    """Make an earlier (or later) revision of a deployed app the current one."""
    raise typer.Exit(_rollback(Target.find(server, data_dir), app_id, revision))


@reports_errors
def _delete(target: Target, app_id: str) -> int:
    with connect(target) as client:
        _checked(client.delete(f"/api/deployments/{app_id}"))
    stdout.print(f"deleted {app_id}: its waiting requests fail, running ones finish")
    return 0


@app.command()
def delete(app_id: AppArgument, server: ServerOption = None,
           data_dir: DataDirOption = DEFAULT_DATA_DIR) -> None:
    """Stop serving a deployed app and remove its revisions."""
    raise typer.Exit(_delete(Target.find(server, data_dir), app_id))
