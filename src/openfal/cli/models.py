"""``openfal models``: the endpoints a server serves and where each runs (with the weights
found on this machine for the local ones), and tiny random test models."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from openfal.cli.client import _checked, connect, reports_errors
from openfal.cli.console import stdout as console
from openfal.cli.console import table
from openfal.cli.options import DEFAULT_DATA_DIR, DataDirOption, JsonOption, ServerOption
from openfal.cli.target import Target
from openfal.models import flux, flux_kontext, flux_krea, hidream, kandinsky, wan, weights
from openfal.models.tiny import TINY_KINDS, is_tiny_random, make_tiny

app = typer.Typer(help="Served models and where they run; tiny random test models.",
                  no_args_is_help=True)
# Built-in app endpoints and the weights each one loads.
APP_WEIGHTS: dict[str, str] = {
    "fal-ai/flux/schnell": flux.SCHNELL,
    "openfal/flux": flux.SCHNELL,
    "fal-ai/flux/dev": flux.DEV,
    "fal-ai/flux-kontext-lora": flux_kontext.KONTEXT,
    "fal-ai/flux-kontext-lora/inpaint": flux_kontext.KONTEXT,
    "fal-ai/flux-kontext-lora/text-to-image": flux_kontext.KONTEXT,
    "fal-ai/flux-krea-lora/stream": flux_krea.KREA,
    "fal-ai/hidream-i1-full": hidream.HIDREAM,
    "fal-ai/kandinsky5/text-to-video": kandinsky.KANDINSKY5_5S,
    "openfal/wan/t2v": wan.T2V_1_3B,
    "openfal/wan/t2v-14b": wan.T2V_14B,
    "openfal/wan/i2v": wan.I2V_14B_720P,
    "fal-ai/wan-trainer/t2v": wan.T2V_1_3B,
    "fal-ai/wan-trainer/t2v-14b": wan.T2V_14B,
    "fal-ai/wan-trainer/i2v-720p": wan.I2V_14B_720P,
}
# Built-in app endpoints that need a runtime module rather than weights.
APP_RUNTIMES: dict[str, str] = {"openfal/tts": "espeakng_loader"}
ModelsDir = Annotated[Path | None, typer.Option(
    "--models-dir", envvar=weights.MODELS_DIR_ENV,
    help="Where weights live (default: DATA_DIR/models).")]
PAGE_SIZE = 100


def _use_models_dir(models_dir: Path) -> None:
    os.environ[weights.MODELS_DIR_ENV] = str(models_dir.expanduser())


@app.command("list")
def list_models(server: ServerOption = None, data_dir: DataDirOption = DEFAULT_DATA_DIR,
                models_dir: ModelsDir = None, as_json: JsonOption = False) -> None:
    """Show every endpoint the server serves and where it runs: here (with its weights found
    in the models dir, or missing), at an upstream provider, or nowhere yet."""
    _use_models_dir(models_dir or data_dir.expanduser() / "models")
    raise typer.Exit(_list(Target.find(server, data_dir), as_json))


@reports_errors
def _list(target: Target, as_json: bool) -> int:
    with connect(target) as client:
        models = served_models(client)
    if as_json:
        print(json.dumps(models))
        return 0
    listing = table("endpoint", "category", "runs", "weights")
    for model in models:
        endpoint_id = model["endpoint_id"]
        runs, weights_path = where_it_runs(endpoint_id, model["runs_on"])
        listing.add_row(endpoint_id, model["metadata"]["category"], runs, weights_path)
    console.print(listing)
    return 0


def served_models(client: httpx.Client) -> list[dict[str, Any]]:
    """Every model of ``GET /v1/models``, page after page."""
    models: list[dict[str, Any]] = []
    params: dict[str, str | int] = {"limit": PAGE_SIZE}
    while True:
        page = _checked(client.get("/v1/models", params=params)).json()
        models += page["models"]
        if not page["has_more"]:
            return models
        params["cursor"] = page["next_cursor"]


def where_it_runs(endpoint_id: str, runs_on: dict[str, Any]) -> tuple[str, str]:
    """How ``runs_on`` reads in the table, and where the weights are (or would be)."""
    kind = runs_on.get("kind")
    if kind == "upstream":
        return f"upstream {runs_on.get('upstream')}", ""
    if kind != "local":
        return f"[red]unavailable[/red] ({runs_on.get('reason', 'unknown')})", ""
    return _locally(endpoint_id, runs_on.get("fallback_upstream"))


def _locally(endpoint_id: str, fallback: str | None) -> tuple[str, str]:
    """What a local endpoint needs, and whether this machine has it."""
    if endpoint_id in APP_RUNTIMES:
        module = APP_RUNTIMES[endpoint_id]
        if weights.missing_modules(module):
            return f"local, [red]runtime missing[/red] ({module})", ""
        return f"local, [green]runtime found[/green] ({module})", ""
    hub_id = APP_WEIGHTS.get(endpoint_id)
    if hub_id is None:
        return "local", ""
    found = weights.find_model(hub_id)
    if found is None:
        otherwise = f", else upstream {fallback}" if fallback else ""
        return (f"local, [red]weights missing[/red]{otherwise}",
                str(weights.local_model_path(hub_id)))
    if is_tiny_random(found):
        return "local, [yellow]random test weights (noise)[/yellow]", str(found)
    return "local, [green]weights found[/green]", str(found)


@app.command("make-tiny")
def make_tiny_model(
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(TINY_KINDS)}.")],
    out_dir: Annotated[Path, typer.Argument(help=(
        "Where to save it, e.g. ~/.openfal/models/black-forest-labs/FLUX.1-schnell."))],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Build a tiny pipeline of the real architecture with RANDOM weights (its output is
    noise), for tests and demos, with no download."""
    if kind not in TINY_KINDS:
        raise typer.BadParameter(f"choose one of {', '.join(TINY_KINDS)}", param_hint="KIND")
    path = make_tiny(kind, out_dir.expanduser(), seed=seed)
    console.print(f"saved a tiny random {kind} pipeline in {path} (its output is noise)")
