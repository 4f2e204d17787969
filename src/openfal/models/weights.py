"""Where model weights are found, and which device and dtype run them.

An app asks for a hub id (``black-forest-labs/FLUX.1-schnell``). openfal looks in
``<models-dir>/<hub id>`` first (``openfal serve --models-dir``; runners get it as
``OPENFAL_MODELS_DIR``), then in the Hugging Face cache, and never downloads.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from openfal.app.errors import ModelUnavailable

MODELS_DIR_ENV = "OPENFAL_MODELS_DIR"


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
