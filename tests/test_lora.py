"""LoRAs: the file checks and the on-disk cache (unit), then end to end through the queue on tiny
FLUX Kontext and FLUX Krea pipelines: scales, several at once, isolation between requests,
upload URLs and data URIs, refusals as 422s on the field, and removal after a cancel."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess, wait_for
from test_run_and_queue import submit, wait_done

pytest.importorskip("diffusers")
pytest.importorskip("peft")
import torch
from safetensors import safe_open
from safetensors.torch import save

from openfal.app.errors import FieldException
from openfal.models.lora import (
    DEFAULT_LORA_CACHE_MB,
    LORA_CACHE_ENV,
    LoraCache,
    NotALora,
    check_lora,
)
from openfal.models.tiny import make_tiny
from test_kontext import digests, failed, fetch, run, serve
from test_media import upload

TEXT_TO_IMAGE = "fal-ai/flux-kontext-lora/text-to-image"
KREA = "fal-ai/flux-krea-lora/stream"
ATTENTION_WEIGHTS = ("to_q.weight", "to_k.weight", "to_v.weight")


def lora_bytes(pipeline_dir: Path, seed: int, rank: int = 4) -> bytes:
    """A LoRA (diffusers/PEFT key names) on the attention projections of the transformer
    saved in ``pipeline_dir``, with random non-zero A and B."""
    weights = pipeline_dir / "transformer" / "diffusion_pytorch_model.safetensors"
    with safe_open(weights, "pt") as model:
        shapes = {name.removesuffix(".weight"): model.get_slice(name).get_shape()
                  for name in model.keys()  # noqa: SIM118 (safe_open is no dict)
                  if name.endswith(ATTENTION_WEIGHTS)}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (out_features, in_features) in shapes.items():
        tensors[f"transformer.{name}.lora_A.weight"] = 0.1 * torch.randn(
            rank, in_features, generator=generator)
        tensors[f"transformer.{name}.lora_B.weight"] = 0.1 * torch.randn(
            out_features, rank, generator=generator)
    return save(tensors)


def data_uri(data: bytes, content_type: str = "application/octet-stream") -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save(tensors)


# The file checks and the cache


def test_a_lora_is_known_by_its_header_whatever_its_name(tmp_path: Path) -> None:
    lora = tmp_path / "style.bin"
    lora.write_bytes(safetensors_bytes({"unet.down.lora_down.weight": torch.ones(2, 4),
                                        "unet.down.lora_up.weight": torch.ones(4, 2),
                                        "unet.down.alpha": torch.tensor(2.0)}))
    check_lora(lora)
    model = tmp_path / "model.safetensors"
    model.write_bytes(safetensors_bytes({"blocks.0.to_q.weight": torch.ones(4, 4)}))
    with pytest.raises(NotALora, match="not a LoRA"):
        check_lora(model)


@pytest.mark.parametrize("content", [
    b"",
    b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
    b"PK\x03\x04 a zip, as torch.save writes",
    struct.pack("<Q", 10) + b"not json!!",
    struct.pack("<Q", 2) + b"[]",
])
def test_anything_but_safetensors_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "lora.safetensors"
    path.write_bytes(content)
    with pytest.raises(NotALora, match="not a safetensors file"):
        check_lora(path)


def test_a_truncated_safetensors_file_is_refused(tmp_path: Path) -> None:
    data = safetensors_bytes({"x.lora_A.weight": torch.ones(8, 8)})
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:-16])
    with pytest.raises(NotALora, match="do not cover"):
        check_lora(path)


def lora_of_size(kilobytes: int, seed: int) -> bytes:
    def values() -> torch.Tensor:
        return torch.full((kilobytes * 256 // 2,), float(seed))

    return safetensors_bytes({"a.lora_A.weight": values(), "a.lora_B.weight": values()})


def test_cache_keeps_files_by_content_and_evicts_the_least_recently_used(
        tmp_path: Path) -> None:
    cache = LoraCache(tmp_path / "loras", cap_bytes=2 * 1024 * 1024)
    entries = []
    for seed in range(3):
        path, digest = cache.fetch(data_uri(lora_of_size(900, seed)), ["loras", 0, "path"])
        assert path == cache.root / f"{digest}.safetensors"
        entries.append((path, digest))
        os.utime(path, (seed, seed))  # the order they were used in
    # The third one pushed the total past 2 MiB: the first (least recently used) went.
    assert not entries[0][0].exists()
    assert entries[1][0].exists() and entries[2][0].exists()
    assert cache.total_bytes() <= cache.cap_bytes
    # The same content again is the same file, now the most recently used.
    again, digest = cache.fetch(data_uri(lora_of_size(900, 1)), ["loras", 0, "path"])
    assert (again, digest) == entries[1]
    cache.fetch(data_uri(lora_of_size(900, 0)), ["loras", 0, "path"])
    assert again.exists() and not entries[2][0].exists()
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".incoming")]


def test_cache_refuses_a_file_larger_than_its_cap(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LORA_CACHE_ENV, "0.5")
    monkeypatch.setenv("OPENFAL_MODELS_DIR", str(tmp_path))
    cache = LoraCache.from_environment()
    assert (cache.root, cache.cap_bytes) == (tmp_path / "loras", 512 * 1024)
    with pytest.raises(FieldException) as refused:
        cache.fetch(data_uri(lora_of_size(600, 0)), ["loras", 1, "path"])
    assert refused.value.to_body()["detail"][0]["loc"] == ["body", "loras", 1, "path"]
    monkeypatch.delenv(LORA_CACHE_ENV)
    assert LoraCache.from_environment().cap_bytes == DEFAULT_LORA_CACHE_MB * 1024 * 1024


# End to end


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("lora")
    models = data_dir / "models" / "black-forest-labs"
    make_tiny("flux-kontext", models / "FLUX.1-Kontext-dev")
    make_tiny("flux", models / "FLUX.1-Krea-dev")
    with serve(data_dir, ["openfal.models.flux_kontext::FluxKontextLora",
                          "openfal.models.flux_krea::FluxKreaLora"]) as server:
        yield server


@pytest.fixture
def client(lora_server: ServerProcess) -> Iterator[httpx.Client]:
    with lora_server.client(timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def loras(lora_server: ServerProcess) -> dict[str, str]:
    """Two LoRAs for the Kontext transformer and one for Krea's, as data URIs."""
    models = lora_server.data_dir / "models" / "black-forest-labs"
    kontext, krea = models / "FLUX.1-Kontext-dev", models / "FLUX.1-Krea-dev"
    return {"a": data_uri(lora_bytes(kontext, 1)), "b": data_uri(lora_bytes(kontext, 2)),
            "krea": data_uri(lora_bytes(krea, 3))}


def image(client: httpx.Client, *applied: tuple[str, float]) -> str:
    body = {"prompt": "a red fox", "image_size": {"width": 128, "height": 96},
            "num_inference_steps": 3, "seed": 9,
            "loras": [{"path": path, "scale": scale} for path, scale in applied]}
    [digest] = digests(client, run(client, TEXT_TO_IMAGE, body))
    return digest


def test_scale_zero_is_the_base_model_and_scale_one_is_not(
        client: httpx.Client, loras: dict[str, str]) -> None:
    base = image(client)
    assert image(client, (loras["a"], 0.0)) == base
    with_a = image(client, (loras["a"], 1.0))
    assert with_a != base
    assert image(client, (loras["a"], 0.5)) not in (base, with_a)
    assert image(client) == base  # removed after the request


def test_several_loras_at_once_with_their_scales(client: httpx.Client,
                                                 loras: dict[str, str]) -> None:
    only_a = image(client, (loras["a"], 1.0))
    only_b = image(client, (loras["b"], 1.0))
    both = image(client, (loras["a"], 1.0), (loras["b"], 1.0))
    assert len({only_a, only_b, both}) == 3
    assert image(client, (loras["a"], 1.0), (loras["b"], 0.0)) == only_a


def test_requests_with_different_loras_each_get_their_own_result(
        client: httpx.Client, loras: dict[str, str]) -> None:
    expected = {name: image(client, (loras[name], 1.0)) for name in ("a", "b")}
    body = {"prompt": "a red fox", "image_size": {"width": 128, "height": 96},
            "num_inference_steps": 3, "seed": 9}
    # Queued together, served one after another by the one runner.
    handles = [(name, submit(client, TEXT_TO_IMAGE,
                             {**body, "loras": [{"path": loras[name], "scale": 1.0}]}))
               for name in ("a", "b", "a", "b")]
    for name, handle in handles:
        assert "error" not in wait_done(client, handle, timeout=120)
        [digest] = digests(client, client.get(handle["response_url"]).json())
        assert digest == expected[name], name


def test_loras_by_upload_url_are_cached_by_content(
        client: httpx.Client, loras: dict[str, str], lora_server: ServerProcess) -> None:
    data = base64.b64decode(loras["a"].split(",", 1)[1])
    url = upload(client, data, "application/octet-stream", "style-weights.bin")
    assert image(client, (url, 1.0)) == image(client, (loras["a"], 1.0))
    digest = hashlib.sha256(data).hexdigest()
    cached = lora_server.data_dir / "models" / "loras" / f"{digest}.safetensors"
    assert cached.read_bytes() == data


@pytest.mark.parametrize(("path", "problem"), [
    (data_uri(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png"), "not a safetensors file"),
    (data_uri(safetensors_bytes({"blocks.0.weight": torch.ones(2, 2)})), "not a LoRA"),
    (data_uri(safetensors_bytes({"text.lora_A.weight": torch.ones(2, 4),
                                 "text.lora_B.weight": torch.ones(4, 2)})), "no layer"),
    ("http://127.0.0.1:9/lora.safetensors", "could not fetch"),
    ("some-user/some-repo", "could not fetch"),
])
def test_what_is_not_a_usable_lora_is_a_422_on_its_path(client: httpx.Client, path: str,
                                                        problem: str,
                                                        loras: dict[str, str]) -> None:
    body = {"prompt": "x", "num_inference_steps": 1, "image_size": {"width": 64, "height": 64},
            "loras": [{"path": loras["a"]}, {"path": path, "scale": 0.5}]}
    response = failed(client, TEXT_TO_IMAGE, body)
    assert response.status_code == 422, response.text
    [detail] = response.json()["detail"]
    assert detail["loc"] == ["body", "loras", 1, "path"]
    assert problem in detail["msg"]


def test_krea_streams_previews_with_a_lora(client: httpx.Client,
                                           loras: dict[str, str]) -> None:
    body = {"prompt": "a tiger eye", "image_size": {"width": 96, "height": 64},
            "num_inference_steps": 4, "seed": 1, "num_images": 3,
            "loras": [{"path": loras["krea"], "scale": 1.0}]}
    with client.stream("POST", f"/{KREA}", json=body) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ")]
    previews, final = events[:-1], events[-1]
    assert [p["step"] for p in previews] == [1, 2, 3]
    assert len(final["images"]) == 1  # "always 1 for streaming output"
    streamed, _ = fetch(client, final["images"][0]["url"])
    assert streamed.size == (96, 64)
    queued = run(client, KREA, {**body, "num_images": 2})
    assert len(queued["images"]) == 2
    base = run(client, KREA, {**body, "loras": []})
    assert digests(client, queued)[0] != digests(client, base)[0]


def test_a_cancelled_request_leaves_no_lora_behind(client: httpx.Client,
                                                   loras: dict[str, str]) -> None:
    base = image(client)
    handle = submit(client, TEXT_TO_IMAGE, {
        "prompt": "slow", "image_size": "square_hd", "num_inference_steps": 100,
        "num_images": 4, "loras": [{"path": loras["b"], "scale": 1.0}]})

    def progressed() -> bool:
        progress = client.get(handle["status_url"]).json().get("progress")
        return bool(progress and progress["step"] >= 1)

    wait_for(progressed, timeout=60, what="a step")
    client.put(handle["cancel_url"])
    assert wait_done(client, handle, timeout=20)["error_type"] == "client_cancelled"
    assert image(client) == base
