"""Tiny random pipelines: real diffusers classes, built offline, loaded the way checkpoints are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from openfal.models.tiny import MARKER_FILE, TINY_KINDS, is_tiny_random, make_tiny

PIPELINE_CLASSES = {"flux": "FluxPipeline", "sd": "StableDiffusionPipeline", "wan": "WanPipeline",
                    "flux-kontext": "FluxKontextPipeline", "hidream": "HiDreamImagePipeline",
                    "kandinsky5": "Kandinsky5T2VPipeline", "wan-i2v": "WanImageToVideoPipeline"}
VIDEO_KINDS = {"kandinsky5", "wan", "wan-i2v"}
CALL_ARGUMENTS: dict[str, dict[str, Any]] = {
    "flux": {"num_inference_steps": 2, "max_sequence_length": 64},
    "flux-kontext": {"num_inference_steps": 2, "max_sequence_length": 64, "max_area": 64 * 64},
    "hidream": {"num_inference_steps": 2},
    "kandinsky5": {"num_inference_steps": 2, "num_frames": 9},
    "wan-i2v": {"num_inference_steps": 2, "num_frames": 9, "max_sequence_length": 64,
                "image": Image.new("RGB", (48, 80), (200, 40, 90))},
    "sd": {"num_inference_steps": 2},
    "wan": {"num_inference_steps": 2, "num_frames": 9, "max_sequence_length": 64},
}
# HiDream always generates about a megapixel.
SIZES = {"flux": (64, 256), "sd": (64,), "wan": (64,), "wan-i2v": (64,), "flux-kontext": (64,),
         "hidream": (1024,), "kandinsky5": (64,)}
PROMPT = "a photo of a cat sitting on a red chair"


def _import_stack() -> Any:
    torch = pytest.importorskip("torch", reason="tiny pipelines need torch")
    pytest.importorskip("transformers", reason="tiny pipelines need transformers")
    pytest.importorskip("diffusers", reason="tiny pipelines need diffusers")
    return torch


@pytest.fixture(scope="module", params=TINY_KINDS)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(kind, saved folder, pipeline loaded back from it), built once per module."""
    torch = _import_stack()
    from diffusers import DiffusionPipeline

    kind = request.param
    path = make_tiny(kind, tmp_path_factory.mktemp(kind), seed=0)
    pipeline = DiffusionPipeline.from_pretrained(path, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return kind, path, pipeline


def _generate(kind: str, pipeline: Any, *, seed: int, size: int) -> Any:
    import torch

    output = pipeline(
        prompt=PROMPT,  # by keyword: Kontext's first parameter is the image
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **CALL_ARGUMENTS[kind],
    )
    return output.frames if kind in VIDEO_KINDS else output.images


def _files(folder: Path, pattern: str = "*") -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob(pattern))
        if path.is_file()
    }


def test_loads_back_as_the_real_pipeline_class(tiny: Any) -> None:
    kind, path, pipeline = tiny
    assert type(pipeline).__name__ == PIPELINE_CLASSES[kind]
    model_index = json.loads((path / "model_index.json").read_text())
    assert model_index["_class_name"] == PIPELINE_CLASSES[kind]


def test_is_marked_as_random_weights(tiny: Any) -> None:
    _, path, _ = tiny
    assert (path / MARKER_FILE).read_text().strip()
    assert is_tiny_random(path)


def test_generates_finite_output_of_the_requested_shape(tiny: Any) -> None:
    import numpy as np

    kind, _, pipeline = tiny
    frames = (1, 9) if kind in VIDEO_KINDS else (1,)
    for size in SIZES[kind]:
        output = _generate(kind, pipeline, seed=0, size=size)
        assert output.shape == (*frames, size, size, 3)
        assert not np.isnan(output).any()
        assert output.std() > 0


def test_generation_is_seeded(tiny: Any) -> None:
    import numpy as np

    kind, _, pipeline = tiny
    first = _generate(kind, pipeline, seed=1, size=64)
    again = _generate(kind, pipeline, seed=1, size=64)
    other = _generate(kind, pipeline, seed=2, size=64)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_build_is_deterministic_per_seed(tiny: Any, tmp_path: Path) -> None:
    kind, path, _ = tiny
    assert _files(make_tiny(kind, tmp_path / "same", seed=0)) == _files(path)
    other = _files(make_tiny(kind, tmp_path / "other", seed=1), "*.safetensors")
    weights = _files(path, "*.safetensors")
    assert other.keys() == weights.keys()
    assert all(other[name] != weights[name] for name in weights)


def test_unknown_kind_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'nope'"):
        make_tiny("nope", tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_plain_folder_is_not_tiny_random(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{}")
    assert not is_tiny_random(tmp_path)


def test_module_imports_without_the_ml_stack() -> None:
    code = (
        "import sys, openfal.models.tiny\n"
        "heavy = {'torch', 'diffusers', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
