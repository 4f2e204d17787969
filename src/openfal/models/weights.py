"""Where model weights are found, and which device and dtype run them.

An app asks for a hub id (``black-forest-labs/FLUX.1-schnell``). openfal looks in
``<models-dir>/<hub id>`` first (``openfal serve --models-dir``; runners get it as
``OPENFAL_MODELS_DIR``), then in the Hugging Face cache, and never downloads.

Settings for small GPUs, read by every diffusers app when it loads a pipeline (the runner
inherits them from ``openfal serve``'s environment):

- ``OPENFAL_CPU_OFFLOAD``: ``model`` keeps each component on the CPU until it runs
  (``enable_model_cpu_offload``: about the largest component in GPU memory, a little slower);
  ``sequential`` moves layer by layer (``enable_sequential_cpu_offload``: least memory, much
  slower); unset or ``none``: everything on the device.
- ``OPENFAL_VAE_TILING=1``: decode in tiles (``vae.enable_tiling``), for large images.
- ``OPENFAL_VAE_SLICING=1``: decode one image of a batch at a time (``vae.enable_slicing``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from openfal.app.errors import ModelUnavailable

MODELS_DIR_ENV = "OPENFAL_MODELS_DIR"
CPU_OFFLOAD_ENV = "OPENFAL_CPU_OFFLOAD"
VAE_TILING_ENV = "OPENFAL_VAE_TILING"
VAE_SLICING_ENV = "OPENFAL_VAE_SLICING"
CPU_OFFLOAD_MODES = ("none", "model", "sequential")


def models_dir() -> Path:
    configured = os.environ.get(MODELS_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".openfal" / "models"


def local_model_path(hub_id: str) -> Path:
    return models_dir() / hub_id


def hf_cache_path(hub_id: str) -> Path | None:
    """The snapshot of ``hub_id`` in the Hugging Face cache, if one is there."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:
        return None


def find_model(hub_id: str) -> Path | None:
    local = local_model_path(hub_id)
    if (local / "model_index.json").is_file() or (local / "config.json").is_file():
        return local
    return hf_cache_path(hub_id)


def require_model(hub_id: str) -> Path:
    """The folder holding ``hub_id``'s weights, or a 503 that says where openfal looked."""
    found = find_model(hub_id)
    if found is None:
        raise ModelUnavailable(
            f"The weights of {hub_id} are not on this machine. openfal looked in "
            f"{local_model_path(hub_id)} and in the Hugging Face cache. Put them in the "
            f"first (or run `openfal models make-tiny` for a random test model there).")
    return found


def missing_modules(*modules: str) -> list[str]:
    """The named modules that are not installed."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require_runtime(*modules: str) -> None:
    """A 503 naming the missing package when a model runtime is not installed."""
    missing = missing_modules(*modules)
    if missing:
        raise ModelUnavailable(
            f"The model runtime is not installed (missing: {', '.join(missing)}). "
            "Install it with: pip install 'openfal[models]'")


def device_and_dtype() -> tuple[str, Any]:
    """CUDA with bfloat16 when there is a GPU, else the CPU with float32.

    ``OPENFAL_DEVICE`` and ``OPENFAL_DTYPE`` (float32, float16, bfloat16) override.
    """
    import torch

    device = os.environ.get("OPENFAL_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    default_dtype = "bfloat16" if device.startswith("cuda") else "float32"
    dtype = getattr(torch, os.environ.get("OPENFAL_DTYPE", default_dtype))
    return device, dtype


def place_pipeline(pipeline: Any, device: str) -> Any:
    """Put a diffusers pipeline on ``device`` as the small-GPU settings say (see the module
    docstring), with its progress bars off. Returns the pipeline."""
    offload = os.environ.get(CPU_OFFLOAD_ENV, "").strip().lower() or "none"
    if offload not in CPU_OFFLOAD_MODES:
        raise ModelUnavailable(f"{CPU_OFFLOAD_ENV}={offload!r}: use one of "
                               f"{', '.join(CPU_OFFLOAD_MODES)}")
    if offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
    else:
        pipeline.to(device)
    if _flag(VAE_TILING_ENV):
        pipeline.vae.enable_tiling()
    if _flag(VAE_SLICING_ENV):
        pipeline.vae.enable_slicing()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
