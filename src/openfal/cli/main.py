"""The ``openfal`` command."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from openfal.cli import client, keys, models, webhooks
from openfal.cli import env as env_cli
from openfal.cli.options import DEFAULT_SERVER, JsonOption, ServerOption
from openfal.fetch import NetworkPolicy
from openfal.net.runtime import load_runtime
from openfal.server import Platform, Settings
from openfal.server import serve as serve_platform

app = typer.Typer(help="openfal: a self-hosted generative-media inference platform.",
                  no_args_is_help=True, add_completion=False)
console = Console()

DEFAULT_DATA_DIR = Path.home() / ".openfal"
app.add_typer(models.app, name="models")
app.add_typer(keys.app, name="keys")
app.add_typer(webhooks.app, name="webhooks")
app.command()(keys.usage)


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
    allow_network: Annotated[list[str] | None, typer.Option(
        help="A private network (CIDR) the server may fetch from for callers, e.g. "
        "10.0.0.0/8 (repeatable). Loopback, private and link-local addresses are refused "
        "otherwise.")] = None,
    no_auth: Annotated[bool, typer.Option(
        help="Turn API keys off: every caller may do everything. Only for a private "
        "machine.")] = False,
    key_concurrency: Annotated[int, typer.Option(
        help="Running requests one API key may have at once, unless set for the key "
        "(0: no limit).")] = 16,
    tls: Annotated[bool, typer.Option(
        help="Serve https/wss with a certificate from a local CA kept in DATA_DIR/tls "
        "(fal-client needs this; see `openfal env`).")] = False,
    tls_names: Annotated[list[str] | None, typer.Option(
        "--tls-name", help="Another DNS name or IP address for the certificate "
        "(repeatable).")] = None,
    proxy: Annotated[bool, typer.Option(
        help="With --tls, run an HTTP CONNECT proxy on 127.0.0.1 that sends the fal host "
        "names (rest.fal.ai, v3.fal.media, ...) here and passes other hosts through.")] = True,
    proxy_port: Annotated[int | None, typer.Option(
        help="Port of that proxy (default: PORT+1, or a free one when PORT is 0; "
        "0: a free one).")] = None,
    webhook_max_attempts: Annotated[int, typer.Option(
        min=1, help="Delivery attempts of a webhook before it is marked failed.")] = 10,
    webhook_retry_base_seconds: Annotated[float, typer.Option(
        min=0, help="Delay before a webhook's first retry; it doubles after each failed "
        "attempt (the defaults retry for about two hours).")] = 15,
    webhook_timeout_seconds: Annotated[float, typer.Option(
        min=0.1, help="Time limit of one webhook delivery attempt.")] = 15,
) -> None:
    """Start the platform: gateway, queue and runners, with state in DATA_DIR."""
    if not tls and (tls_names or proxy_port is not None):
        raise typer.BadParameter("--tls-name and --proxy-port need --tls")
    try:
        NetworkPolicy.allowing(allow_network or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--allow-network") from None
    settings = Settings(host=host, port=port, data_dir=data_dir.expanduser(),
                        apps=app_refs or [], builtin_apps=not no_builtin, owner=owner,
                        max_body_bytes=int(max_body_mb * 1024 * 1024),
                        retention_seconds=retention_days * 24 * 3600,
                        public_url=public_url,
                        default_file_ttl_seconds=(file_ttl_days * 24 * 3600
                                                  if file_ttl_days > 0 else None),
                        models_dir_override=models_dir.expanduser() if models_dir else None,
                        max_download_bytes=int(max_download_mb * 1024 * 1024),
                        allow_networks=allow_network or [],
                        auth=not no_auth,
                        default_key_concurrency=key_concurrency or None,
                        tls=tls, tls_names=tls_names or [], proxy=proxy, proxy_port=proxy_port,
                        webhook_max_attempts=webhook_max_attempts,
                        webhook_retry_base_seconds=webhook_retry_base_seconds,
                        webhook_timeout_seconds=webhook_timeout_seconds)

    def announce(platform: Platform, url: str) -> None:
        console.print(f"openfal listening on {url}", highlight=False)
        console.print(f"data dir: {settings.data_dir}", highlight=False)
        runtime = load_runtime(settings.data_dir)
        if runtime is not None and runtime.proxy_url:
            console.print(f"proxy for the fal hosts: {runtime.proxy_url}", highlight=False)
        if tls:
            console.print(f"fal-client: eval \"$(openfal env --data-dir "
                          f"{shlex.quote(str(settings.data_dir))})\"", highlight=False)
        for served in platform.registry.apps.values():
            for endpoint_id in served.endpoint_ids():
                console.print(f"  serving {endpoint_id}  ({served.ref})", highlight=False)
        if not settings.auth:
            console.print("[yellow]warning: --no-auth: anyone who can reach this server may "
                          "use it and see every request[/yellow]")
        elif platform.new_admin_key is not None:
            console.print(f"created the first ADMIN key (shown once; also saved in "
                          f"{settings.admin_key_path}):\n  {platform.new_admin_key}",
                          highlight=False)

    serve_platform(settings, on_ready=announce)


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


@app.command()
def env(
    data_dir: Annotated[Path, typer.Option(
        help="Data dir of the running `openfal serve --tls`.")] = DEFAULT_DATA_DIR,
    server: Annotated[str | None, typer.Option(
        help="Use this URL for the server instead of the one it listens on.")] = None,
) -> None:
    """Print shell exports that point the unchanged fal-client at the running server:
    eval "$(openfal env)"."""
    raise typer.Exit(env_cli.env_command(data_dir.expanduser(), server))


def main() -> None:
    app()
