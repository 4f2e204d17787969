"""HiDream-I1 Full end to end through the queue on a tiny random HiDreamImagePipeline (two CLIPs,
T5, a Llama with an offline-built tokenizer), loaded by the real loading code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess

pytest.importorskip("diffusers")
pytest.importorskip("peft")
from openfal.app.errors import ModelUnavailable
from openfal.models.hidream import LLAMA, load_hidream
from openfal.models.tiny import make_tiny
from test_kontext import digests, fetch, run, serve
from test_lora import data_uri, lora_bytes

HIDREAM = "fal-ai/hidream-i1-full"


@pytest.fixture(scope="module")
def hidream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("hidream")
    make_tiny("hidream", data_dir / "models" / "HiDream-ai" / "HiDream-I1-Full")
    with serve(data_dir, ["openfal.models.hidream::HidreamI1Full"]) as server:
        yield server


@pytest.fixture
def client(hidream_server: ServerProcess) -> Iterator[httpx.Client]:
    with hidream_server.client(timeout=120) as c:
        yield c


def body(**fields: object) -> dict[str, object]:
    return {"prompt": "a cat holding a skateboard", "num_inference_steps": 2, "seed": 8,
            "image_size": {"width": 100, "height": 60}, **fields}


def test_sizes_are_honoured(client: httpx.Client) -> None:
    custom = run(client, HIDREAM, body(num_images=2, output_format="png"))
    assert [(m["width"], m["height"]) for m in custom["images"]] == [(100, 60), (100, 60)]
    image, _ = fetch(client, custom["images"][1]["url"])
    assert (image.size, image.format) == ((100, 60), "PNG")
    assert custom["has_nsfw_concepts"] == [None, None]
    assert custom["safety_checked"] is False
    default = run(client, HIDREAM, body(image_size=None, num_inference_steps=1))
    assert (default["images"][0]["width"], default["images"][0]["height"]) == (1024, 1024)
    assert default["images"][0]["content_type"] == "image/jpeg"


def test_same_seed_same_image_and_the_negative_prompt_counts(client: httpx.Client) -> None:
    first = digests(client, run(client, HIDREAM, body()))
    assert digests(client, run(client, HIDREAM, body())) == first
    assert digests(client, run(client, HIDREAM, body(seed=9))) != first
    assert digests(client, run(client, HIDREAM, body(negative_prompt="blurry"))) != first


def test_lora_scale_zero_is_the_base_model_and_one_is_not(
        client: httpx.Client, hidream_server: ServerProcess) -> None:
    lora = data_uri(lora_bytes(hidream_server.data_dir / "models" / "HiDream-ai" /
                               "HiDream-I1-Full", seed=4))
    base = digests(client, run(client, HIDREAM, body()))
    off = run(client, HIDREAM, body(loras=[{"path": lora, "scale": 0.0, "weight_name": None}]))
    assert digests(client, off) == base
    on = run(client, HIDREAM, body(loras=[{"path": lora, "scale": 1.0}]))
    assert digests(client, on) != base


def test_stream_sends_previews_then_the_result(client: httpx.Client) -> None:
    with client.stream("POST", f"/{HIDREAM}/stream",
                       json=body(num_inference_steps=4)) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ")]
    previews, final = events[:-1], events[-1]
    assert [p["step"] for p in previews] == [1, 2, 3]
    assert previews[0]["images"][0]["url"].startswith("data:image/jpeg;base64,")
    assert (final["images"][0]["width"], final["images"][0]["height"]) == (100, 60)


def test_the_output_schema_is_fluxs(client: httpx.Client) -> None:
    document = client.get("/api/openapi/queue/openapi.json",
                          params={"endpoint_id": HIDREAM}).json()
    output = document["components"]["schemas"]["HidreamI1FullOutput"]
    assert list(output["properties"])[:5] == ["images", "timings", "seed",
                                              "has_nsfw_concepts", "prompt"]


def test_without_a_llama_the_503_names_where_it_looked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENFAL_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    repo = tmp_path / "HiDream-ai" / "HiDream-I1-Full"
    repo.mkdir(parents=True)
    (repo / "model_index.json").write_text("{}")
    with pytest.raises(ModelUnavailable) as missing:
        load_hidream()
    assert str(tmp_path / LLAMA) in missing.value.message
