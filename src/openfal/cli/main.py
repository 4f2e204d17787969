"""The ``openfal`` command."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from openfal.cli import client, deploy, keys, models, secrets, webhooks
from openfal.cli import env as env_cli
from openfal.cli.console import stdout as console
from openfal.cli.options import (
    DATA_DIR_VARIABLE,
    DEFAULT_DATA_DIR,
    DataDirOption,
    JsonOption,
    ServerOption,
    StoreOption,
)
from openfal.cli.target import Target
from openfal.errors import ConfigError
from openfal.fetch import NetworkPolicy
from openfal.net.runtime import load_runtime
from openfal.server import Platform, Settings
from openfal.server import serve as serve_platform
from openfal.upstream.config import UpstreamSet, load_config
from openfal.upstream.placement import is_routed_only
from openfal.worker.gpus import parse_gpus

HELP = ("openfal: a self-hosted generative-media inference platform.\n\n"
        "The client commands (run, apps, deploy, runners, keys, usage, webhooks, secrets) "
        "find the server by themselves: --server or OPENFAL_SERVER, else the server running on the "
        "data dir (--data-dir or OPENFAL_DATA_DIR, default ~/.openfal), else "
        "http://127.0.0.1:8000. They send the key in OPENFAL_KEY, else the data dir's "
        "admin.key; never FAL_KEY, which is fal-client's (usually a key for the hosted "
        "platform).")
RUN_HELP = ("Call an endpoint through the queue, showing its progress and logs, and print "
            "the result.\n\n"
            "At the end it prints how long the request took since it was submitted, and how "
            "much of that it spent on its runner: the whole endpoint call, including loading "
            "a model the first time a runner needs it. That can be far more than what an app "
            "reports in its result (FLUX's timings.inference counts the image generation "
            "alone).")

GpusOption = Annotated[str | None, typer.Option(
    "--gpus", show_default=False,
    help="GPUs for the runners: all (what nvidia-smi lists) or device ids, e.g. 0,1. Each "
    "runner gets its app's num_gpus of them (1 for a GPU machine_type) in "
    "CUDA_VISIBLE_DEVICES, never shared; with none free, requests wait. Runners of apps "
    "without a GPU get none. Default: not managed (runners see every GPU).")]

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False)

app.add_typer(models.app, name="models")
app.add_typer(keys.app, name="keys")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(secrets.app, name="secrets")
app.add_typer(deploy.app, name="apps")
app.command()(deploy.deploy)
app.command()(keys.usage)


@app.callback()
def _root() -> None:
    pass


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8000,
    data_dir: Annotated[Path, typer.Option(
        envvar=DATA_DIR_VARIABLE, help="Where state lives.")] = DEFAULT_DATA_DIR,
    app_refs: Annotated[list[str] | None, typer.Option(
        "--app", help="An app to serve, as path/to/file.py::ClassName (repeatable).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="A TOML file with [[upstream]] entries: upstream providers (the hosted "
        "platform, another openfal) that endpoints are routed to.")] = None,
    owner: Annotated[str, typer.Option(help="Owner part of the apps' endpoint ids.")] = "openfal",
    no_builtin: Annotated[bool, typer.Option(
        "--no-builtin", help="Serve only the apps named.")] = False,
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
        "--no-auth", help="Turn API keys off: every caller may do everything. Only for a "
        "private machine.")] = False,
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
    drain_seconds: Annotated[float, typer.Option(
        min=0, help="On SIGTERM/SIGINT, how long running requests get to finish before the "
        "rest is handed back; a second signal stops at once.")] = 30,
    max_waiting_direct: Annotated[int, typer.Option(
        min=0, help="Direct runs one key may have waiting for a runner; past it a direct run "
        "gets 429 with Retry-After (0: no bound).")] = 32,
    max_connections: Annotated[int, typer.Option(
        min=1, help="Open connections accepted at once; past it new ones get a 503.")] = 2048,
    header_timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds a request's headers may take to arrive.")] = 10,
    max_header_kb: Annotated[int, typer.Option(
        min=1, help="Largest request head (request line and headers), in KiB.")] = 64,
    store: StoreOption = None,
    files: Annotated[str | None, typer.Option(
        envvar="OPENFAL_FILES", show_default=False,
        help="Where uploads and outputs live: s3://bucket/prefix on an S3-compatible store "
        "(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION), shared "
        "by every gateway and worker (default: DATA_DIR/files).")] = None,
    no_runners: Annotated[bool, typer.Option(
        "--no-runners", help="Run no runners here: `openfal worker` processes serve the "
        "apps (a gateway of a many-host setup).")] = False,
    lease_seconds: Annotated[float, typer.Option(
        min=1, help="How long a request stays claimed by a worker that stops renewing its "
        "lease (it died, froze or lost the network) before it is retried.")] = 30,
    public_metrics: Annotated[bool, typer.Option(
        "--public-metrics", help="Serve GET /metrics (Prometheus) without a key; by default "
        "it needs an ADMIN key.")] = False,
    gpus: GpusOption = None,
) -> None:
    """Start the platform: gateway, queue and runners, with state in DATA_DIR."""
    if not tls and (tls_names or proxy_port is not None):
        raise typer.BadParameter("--tls-name and --proxy-port need --tls")
    try:
        NetworkPolicy.allowing(allow_network or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--allow-network") from None
    try:
        upstreams = _upstreams(config)
        devices = parse_gpus(gpus)
    except ConfigError as exc:
        _config_error(exc)
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
                        webhook_timeout_seconds=webhook_timeout_seconds,
                        drain_seconds=drain_seconds,
                        max_waiting_direct_per_key=max_waiting_direct or None,
                        max_connections=max_connections,
                        header_timeout_seconds=header_timeout,
                        max_header_bytes=max_header_kb * 1024, upstreams=upstreams,
                        store_url=store, files_url=files, runners=not no_runners,
                        lease_seconds=lease_seconds, public_metrics=public_metrics,
                        gpus=devices)
    try:
        serve_platform(settings, on_ready=lambda platform, url: _announce(settings, platform,
                                                                          url))
    except ConfigError as exc:
        _config_error(exc)


@app.command()
def worker(
    server: Annotated[str, typer.Option(
        envvar="OPENFAL_SERVER", help="URL of a gateway (or of a load balancer in front of "
        "several).")],
    key: Annotated[str, typer.Option(
        envvar="OPENFAL_KEY", help="An ADMIN key of that gateway.")],
    app_refs: Annotated[list[str] | None, typer.Option(
        "--app", help="An app to serve, as path/to/file.py::ClassName or module::Class "
        "(repeatable; default: the built-in model apps).")] = None,
    data_dir: Annotated[Path, typer.Option(
        envvar=DATA_DIR_VARIABLE, help="Where this worker keeps its state (models, caches)."
        )] = DEFAULT_DATA_DIR,
    models_dir: Annotated[Path | None, typer.Option(
        help="Where model weights live (default: DATA_DIR/models).")] = None,
    environments_dir: Annotated[Path | None, typer.Option(
        envvar="OPENFAL_ENVIRONMENTS_DIR", show_default=False,
        help="Where the Python environments of apps with requirements are built and kept "
        "(default: DATA_DIR/environments).")] = None,
    files: Annotated[str | None, typer.Option(
        envvar="OPENFAL_FILES", show_default=False,
        help="Where outputs go, if not where the gateway says (its s3:// bucket, or its "
        "folder when the worker shares its disk).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="A TOML file with [[upstream]] entries, for routed apps.")] = None,
    drain_seconds: Annotated[float, typer.Option(
        min=0, help="On SIGTERM/SIGINT, how long running requests get to finish before the "
        "rest is handed back to the queue.")] = 30,
    gpus: GpusOption = None,
) -> None:
    """Run runners on this host for a gateway: claim queued and direct work for the apps
    served here, run it, report logs, progress and results."""
    import asyncio
    import logging

    from openfal.server import LOCAL_APPS
    from openfal.worker.service import WorkerSettings, run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    try:
        settings = WorkerSettings(
            server_url=server, key=key, apps=app_refs or LOCAL_APPS,
            data_dir=data_dir.expanduser(),
            models_dir=models_dir.expanduser() if models_dir else None, files=files,
            drain_seconds=drain_seconds, upstreams=_upstreams(config),
            gpus=parse_gpus(gpus),
            environments_dir=environments_dir.expanduser() if environments_dir else None)
        asyncio.run(run_worker(settings))
    except ConfigError as exc:
        _config_error(exc)


db_app = typer.Typer(help="The store's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    store: StoreOption = None,
    data_dir: Annotated[Path, typer.Option(
        envvar=DATA_DIR_VARIABLE, help="The data dir of the SQLite store.")] = DEFAULT_DATA_DIR,
) -> None:
    """Bring the store's schema up to date (`serve` does it too when it starts)."""
    import asyncio

    from openfal.store import open_store

    async def upgrade() -> int:
        opened = open_store(store, data_dir.expanduser())
        await opened.open()
        try:
            return await opened.schema_version()
        finally:
            await opened.close()

    try:
        version = asyncio.run(upgrade())
    except ConfigError as exc:
        _config_error(exc)
    console.print(f"store schema at version {version}")


def _upstreams(config: Path | None) -> UpstreamSet:
    if config is None:
        return UpstreamSet()
    upstreams = load_config(config.expanduser())
    upstreams.check_keys()
    return upstreams


def _config_error(exc: ConfigError) -> NoReturn:
    # A mistake in how the server was started: the message says it all.
    print(f"error: {exc}", file=sys.stderr)
    raise typer.Exit(1) from None


def _announce(settings: Settings, platform: Platform, url: str) -> None:
    console.print(f"openfal listening on {url}")
    console.print(f"data dir: {settings.data_dir}")
    runtime = load_runtime(settings.data_dir)
    if runtime is not None and runtime.proxy_url:
        console.print(f"proxy for the fal hosts: {runtime.proxy_url}")
    if settings.tls:
        console.print(f"fal-client: eval \"$(openfal env --data-dir "
                      f"{shlex.quote(str(settings.data_dir))})\"")
    routed: list[str] = []
    for served in platform.registry.apps.values():
        if is_routed_only(served.cls):
            routed += served.endpoint_ids()
            continue
        for endpoint_id in served.endpoint_ids():
            console.print(f"  serving {endpoint_id}  ({served.ref})")
    if routed:
        _announce_routed(settings, routed)
    if not settings.auth:
        console.print("[yellow]warning: --no-auth: anyone who can reach this server may "
                      "use it and see every request[/yellow]")
    elif platform.new_admin_key is not None:
        console.print(f"created the first ADMIN key (shown once; also saved in "
                      f"{settings.admin_key_path}):\n  {platform.new_admin_key}")


def _announce_routed(settings: Settings, endpoint_ids: list[str]) -> None:
    """Endpoints that run at an upstream: one line per upstream, and how many have none."""
    by_upstream: dict[str, int] = {}
    for endpoint_id in endpoint_ids:
        upstream = settings.upstreams.for_endpoint(endpoint_id)
        name = upstream.name if upstream else ""
        by_upstream[name] = by_upstream.get(name, 0) + 1
    for name, count in sorted(by_upstream.items()):
        if name:
            console.print(f"  routing {count} endpoints to the upstream {name}")
    if by_upstream.get(""):
        console.print(f"  {by_upstream['']} model-page endpoints need an upstream "
                      "(--config; `openfal models list` shows them)")


@app.command(help=RUN_HELP)
def run(
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint to call, e.g. openfal/echo.")],
    input_json: Annotated[str | None, typer.Option(
        "--input", "-i", help="The input as a JSON object, or @file.json.")] = None,
    args: Annotated[list[str] | None, typer.Option(
        "--arg", "-a", help="An input field as key=value; JSON values are parsed "
        "(repeatable, overrides --input).")] = None,
    server: ServerOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    output_dir: Annotated[Path | None, typer.Option(
        help="Download the result's files into this directory.")] = None,
    as_json: JsonOption = False,
) -> None:
    raise typer.Exit(client.run_command(Target.find(server, data_dir), endpoint_id,
                                        input_json, args or [], output_dir, as_json))


@app.command()
def runners(server: ServerOption = None, data_dir: DataDirOption = DEFAULT_DATA_DIR,
            as_json: JsonOption = False) -> None:
    """List the server's runner processes."""
    raise typer.Exit(client.runners_command(Target.find(server, data_dir), as_json))


@app.command()
def env(
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    server: Annotated[str | None, typer.Option(
        help="Use this URL for the server instead of the one it listens on.")] = None,
) -> None:
    """Print exports that point fal-client and the openfal commands at the --tls server.

    Usage: eval "$(openfal env)"."""
    raise typer.Exit(env_cli.env_command(data_dir.expanduser(), server))


def main() -> None:
    app()
