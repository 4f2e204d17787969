"""The ``openfal`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from openfal.cli import client, models
from openfal.server import Platform, Settings
from openfal.server import serve as serve_platform

app = typer.Typer(help="openfal: a self-hosted generative-media inference platform.",
                  no_args_is_help=True, add_completion=False)
console = Console()

DEFAULT_SERVER = "http://127.0.0.1:8000"
ServerOption = Annotated[str, typer.Option("--server", envvar="OPENFAL_SERVER",
                                           help="URL of the openfal server.")]


DEFAULT_DATA_DIR = Path.home() / ".openfal"
app.add_typer(models.app, name="models")


@app.callback()
def _root() -> None:
    """openfal: a self-hosted generative-media inference platform."""


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Where state lives.")] = DEFAULT_DATA_DIR,
    app_refs: Annotated[list[str] | None, typer.Option(
        "--app", help="An app to serve, as path/to/file.py::ClassName (repeatable).")] = None,
    owner: Annotated[str, typer.Option(help="Owner part of the apps' endpoint ids.")] = "openfal",
    no_builtin: Annotated[bool, typer.Option(help="Serve only the apps named.")] = False,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, in MiB.")] = 32,
    retention_days: Annotated[float, typer.Option(
        help="How long finished requests and their results are kept.")] = 30,
    public_url: Annotated[str | None, typer.Option(
        help="Base URL put into file URLs (default: the URL the server listens on).")] = None,
    file_ttl_days: Annotated[float, typer.Option(
        help="How long uploaded files are kept unless a request says otherwise; "
        "0: forever.")] = 7,
    models_dir: Annotated[Path | None, typer.Option(
        help="Where model weights live (default: DATA_DIR/models).")] = None,
    max_download_mb: Annotated[float, typer.Option(
        help="Largest file a request may point at by URL, in MiB.")] = 512,
) -> None:
    """Start the platform: gateway, queue and runners, with state in DATA_DIR."""
    settings = Settings(host=host, port=port, data_dir=data_dir.expanduser(),
                        apps=app_refs or [], builtin_apps=not no_builtin, owner=owner,
                        max_body_bytes=int(max_body_mb * 1024 * 1024),
                        retention_seconds=retention_days * 24 * 3600,
                        public_url=public_url,
                        default_file_ttl_seconds=(file_ttl_days * 24 * 3600
                                                  if file_ttl_days > 0 else None),
                        models_dir_override=models_dir.expanduser() if models_dir else None,
                        max_download_bytes=int(max_download_mb * 1024 * 1024))

    def announce(platform: Platform, url: str) -> None:
        console.print(f"openfal listening on {url}", highlight=False)
        console.print(f"data dir: {settings.data_dir}", highlight=False)
        for served in platform.registry.apps.values():
            for endpoint_id in served.endpoint_ids():
                console.print(f"  serving {endpoint_id}  ({served.ref})", highlight=False)

    serve_platform(settings, on_ready=announce)


JsonOption = Annotated[bool, typer.Option("--json", help="Print compact JSON.")]


@app.command()
def run(
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint to call, e.g. openfal/echo.")],
    input_json: Annotated[str | None, typer.Option(
        "--input", "-i", help="The input as a JSON object, or @file.json.")] = None,
    args: Annotated[list[str] | None, typer.Option(
        "--arg", "-a", help="An input field as key=value; JSON values are parsed "
        "(repeatable, overrides --input).")] = None,
    server: ServerOption = DEFAULT_SERVER,
    output_dir: Annotated[Path | None, typer.Option(
        help="Download the result's files into this directory.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Call an endpoint through the queue, showing its progress and logs, and print the result."""
    raise typer.Exit(client.run_command(server.rstrip("/"), endpoint_id, input_json, args or [],
                                        output_dir, as_json))


@app.command()
def apps(server: ServerOption = DEFAULT_SERVER, as_json: JsonOption = False) -> None:
    """List the endpoints the server serves."""
    raise typer.Exit(client.apps_command(server.rstrip("/"), as_json))


@app.command()
def runners(server: ServerOption = DEFAULT_SERVER, as_json: JsonOption = False) -> None:
    """List the server's runner processes."""
    raise typer.Exit(client.runners_command(server.rstrip("/"), as_json))


def main() -> None:
    app()
