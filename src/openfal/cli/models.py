"""``openfal models``: which weights are present for the built-in apps, and test models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from openfal.cli.console import stdout as console
from openfal.cli.console import table
from openfal.models import flux, weights
from openfal.models.tiny import TINY_KINDS, is_tiny_random, make_tiny

app = typer.Typer(help="Model weights: what is present, and tiny random test models.",
                  no_args_is_help=True)
# Built-in app endpoints and the weights each one loads.
APP_WEIGHTS: dict[str, str] = {
    "fal-ai/flux/schnell": flux.SCHNELL,
    "openfal/flux": flux.SCHNELL,
    "fal-ai/flux/dev": flux.DEV,
}
ModelsDir = Annotated[Path | None, typer.Option(
    "--models-dir", envvar=weights.MODELS_DIR_ENV,
    help="Where weights live (default: <data-dir>/models, i.e. ~/.openfal/models).")]


def _use_models_dir(models_dir: Path | None) -> None:
    if models_dir is not None:
        import os

        os.environ[weights.MODELS_DIR_ENV] = str(models_dir.expanduser())


@app.command("list")
def list_models(models_dir: ModelsDir = None) -> None:
    """Show, for each built-in model app, whether its weights are present and where."""
    _use_models_dir(models_dir)
    models = table("endpoint", "weights", "status", "path")
    for endpoint, hub_id in APP_WEIGHTS.items():
        found = weights.find_model(hub_id)
        if found is None:
            status, where = "[red]missing[/red]", str(weights.local_model_path(hub_id))
        elif is_tiny_random(found):
            status, where = "[yellow]random test weights (noise)[/yellow]", str(found)
        else:
            status, where = "[green]present[/green]", str(found)
        models.add_row(endpoint, hub_id, status, where)
    models.add_row("openfal/tts", "espeak-ng (bundled by espeakng-loader)",
                   "[red]missing[/red]" if weights.missing_modules("espeakng_loader")
                   else "[green]present[/green]",
                   "")
    console.print(models)


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
