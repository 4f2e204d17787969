"""The 40 catalog endpoints: their schemas as the model pages give them, served, checked at
the gateway before anything runs, and listed by ``GET /v1/models`` and ``openfal models list``.

The expectations come from the catalog itself (``../shared/catalog/endpoints.json``, beside
the project wherever it is checked out), not from the package's models, so a wrong hand edit
of a generated schema fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from openfal.catalog import ENDPOINTS
from openfal.catalog.apps import CATALOG_APP_REFS, LOCAL_IDS
from openfal.cli.models import where_it_runs
from openfal.testing import ServerProcess

CATALOG = Path(__file__).resolve().parents[2] / "shared" / "catalog" / "endpoints.json"
PAGES: dict[str, dict[str, Any]] = {
    page["id"]: page for page in json.loads(CATALOG.read_text())["endpoints"]}
OPEN_WEIGHTS = {
    "fal-ai/flux-kontext-lora", "fal-ai/flux-kontext-lora/inpaint",
    "fal-ai/flux-kontext-lora/text-to-image", "fal-ai/flux-krea-lora/stream",
    "fal-ai/hidream-i1-full", "fal-ai/kandinsky5/text-to-video", "fal-ai/wan-trainer/t2v",
    "fal-ai/wan-trainer/t2v-14b", "fal-ai/wan-trainer/i2v-720p"}
# Apps that are not catalog pages, served beside them.
OTHER_APPS = ["openfal.models.echo::Echo", "openfal.models.flux::Flux",
              "openfal.models.flux_kontext::FluxKontextLora",
              "openfal.models.flux_krea::FluxKreaLora", "openfal.models.hidream::HidreamI1Full",
              "openfal.models.kandinsky::Kandinsky5",
              "openfal.models.wan_trainer::WanTrainerT2V",
              "openfal.models.wan_trainer::WanTrainerT2V14B",
              "openfal.models.wan_trainer::WanTrainerI2V720P"]
OTHER_ENDPOINTS = {"openfal/echo", "fal-ai/flux/schnell", "fal-ai/flux/dev"}


@pytest.fixture(scope="module")
def catalog_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = [arg for ref in [*CATALOG_APP_REFS, *OTHER_APPS] for arg in ("--app", ref)]
    with ServerProcess(tmp_path_factory.mktemp("catalog"),
                       [*args, "--no-builtin", "--no-auth"]) as server:
        yield server


@pytest.fixture
def client(catalog_server: ServerProcess) -> Iterator[httpx.Client]:
    with catalog_server.client() as c:
        yield c


def resolved(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def enum_of(schema: dict[str, Any], document: dict[str, Any]) -> list[Any] | None:
    """The values a property's schema enumerates, wherever in its ``anyOf`` they are."""
    schema = resolved(schema, document)
    if "enum" in schema:
        return schema["enum"]
    if "const" in schema:
        return [schema["const"]]
    return next((found for option in schema.get("anyOf", [])
                 if (found := enum_of(option, document))), None)


def served_input_schema(client: httpx.Client, endpoint_id: str
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    response = client.get("/api/openapi/queue/openapi.json",
                          params={"endpoint_id": endpoint_id})
    assert response.status_code == 200, response.text
    document = response.json()
    body = document["paths"][f"/{endpoint_id}"]["post"]["requestBody"]
    return resolved(body["content"]["application/json"]["schema"], document), document


def assert_no_runner(client: httpx.Client) -> None:
    assert client.get("/api/runners").json()["runners"] == []


def test_the_package_has_every_page() -> None:
    assert len(PAGES) == 40
    assert set(ENDPOINTS) == set(PAGES)
    assert {e.id for e in ENDPOINTS.values() if e.open_weights} == OPEN_WEIGHTS
    for endpoint_id, page in PAGES.items():
        entry = ENDPOINTS[endpoint_id]
        assert (entry.category, entry.title, entry.description) == (
            page["category"], page["title"], page["description"])
        assert entry.example_input == page["example_input"]


@pytest.mark.parametrize("endpoint_id", sorted(PAGES))
def test_served_schema_is_the_pages(client: httpx.Client, endpoint_id: str) -> None:
    page = PAGES[endpoint_id]
    schema, document = served_input_schema(client, endpoint_id)
    properties = schema["properties"]
    assert list(properties) == [field["name"] for field in page["input"]]
    assert set(schema.get("required", [])) == {f["name"] for f in page["input"] if f["required"]}
    for field in page["input"]:
        served = properties[field["name"]]
        assert enum_of(served, document) == field["enum"], field["name"]
        if field["has_default"]:
            assert served["default"] == field["default"], field["name"]
        for constraint in field["constraints"]:
            if constraint["kind"] == "range":
                assert (served["minimum"], served["maximum"]) == (
                    constraint["min"], constraint["max"])
    # The page's example is valid, and fields the page does not know are ignored.
    model = ENDPOINTS[endpoint_id].input_model
    model.model_validate(page["example_input"])
    model.model_validate({**page["example_input"], "not_a_field": [1, 2]})


@pytest.mark.parametrize("endpoint_id", sorted(PAGES))
def test_bad_input_is_a_422_on_the_field_before_anything_runs(
        client: httpx.Client, endpoint_id: str) -> None:
    page = PAGES[endpoint_id]
    enum_field = next((f["name"] for f in page["input"] if f["enum"]), None)
    if enum_field is not None:
        body = {**page["example_input"], enum_field: "not-one-of-them"}
        expected = {"loc": ["body", enum_field], "type": "literal_error"}
    else:
        missing = next(f["name"] for f in page["input"] if f["required"])
        body = {k: v for k, v in page["example_input"].items() if k != missing}
        expected = {"loc": ["body", missing], "type": "missing"}
    for url in (f"/queue/{endpoint_id}", f"/{endpoint_id}"):
        response = client.post(url, json=body)
        assert response.status_code == 422, (url, response.text)
        # A union's errors name its member after the field, as pydantic's always do.
        problems = [{"loc": p["loc"][:2], "type": p["type"]} for p in response.json()["detail"]]
        assert expected in problems, problems
    assert_no_runner(client)


@pytest.mark.parametrize("endpoint_id", sorted(set(PAGES) - LOCAL_IDS))
def test_example_passes_the_gateway(client: httpx.Client, endpoint_id: str) -> None:
    """Catalog endpoints that do not run here run upstream: with none configured the call is
    refused once its input has passed validation, before a request exists."""
    body = {**PAGES[endpoint_id]["example_input"], "not_a_field": True}
    response = client.post(f"/queue/{endpoint_id}", json=body)
    assert response.status_code == 503, response.text
    assert response.json()["error_type"] == "upstream_not_configured"
    assert_no_runner(client)


def test_numeric_enums_take_numbers_and_text(client: httpx.Client) -> None:
    """sora-2's page gives ``duration: 4`` against the enum "4", "8", "12"."""
    model = ENDPOINTS["fal-ai/sora-2/text-to-video/pro"].input_model
    assert model.model_validate({"prompt": "p", "duration": 4}).duration == "4"
    assert model.model_validate({"prompt": "p", "duration": "12"}).duration == "12"
    response = client.post("/queue/fal-ai/sora-2/text-to-video/pro",
                           json={"prompt": "p", "duration": 5})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "duration"]
    tolerance = ENDPOINTS["fal-ai/flux-pro/kontext/max"].input_model
    assert tolerance.model_validate({"prompt": "p", "image_url": "u",
                                     "safety_tolerance": 6}).safety_tolerance == "6"


def test_an_empty_training_data_url_passes_validation() -> None:
    for endpoint_id in ("fal-ai/wan-trainer/t2v", "fal-ai/wan-trainer/t2v-14b",
                        "fal-ai/wan-trainer/i2v-720p"):
        model = ENDPOINTS[endpoint_id].input_model
        assert model.model_validate({"training_data_url": ""}).training_data_url == ""


def test_hidream_has_fluxs_output() -> None:
    output = ENDPOINTS["fal-ai/hidream-i1-full"].output_model
    assert list(output.model_fields) == ["images", "timings", "seed", "has_nsfw_concepts",
                                         "prompt"]


def list_all(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Every model, page after page, checking the pages' own fields."""
    models: list[dict[str, Any]] = []
    cursor = None
    while True:
        answer = client.get("/v1/models", params={**params, **(
            {"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        models += page["models"]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return models
        assert len(page["models"]) == params.get("limit", 50)
        cursor = page["next_cursor"]


def test_models_lists_every_served_endpoint(client: httpx.Client) -> None:
    models = list_all(client, limit=7)
    ids = [model["endpoint_id"] for model in models]
    assert ids == sorted(set(PAGES) | OTHER_ENDPOINTS)
    by_id = {model["endpoint_id"]: model for model in models}
    for endpoint_id, page in PAGES.items():
        metadata = by_id[endpoint_id]["metadata"]
        assert metadata["category"] == page["category"]
        assert metadata["description"] == page["description"]
        assert metadata["tags"] == page["tags"]
        assert metadata["status"] == "active"
        assert metadata["display_name"] == page["title"] or page["title"] is None
        runs_on = by_id[endpoint_id]["runs_on"]
        if endpoint_id in LOCAL_IDS:
            assert runs_on["kind"] == "local"
        else:
            assert runs_on == {"kind": "unavailable", "reason": "upstream_not_configured"}
    assert by_id["fal-ai/flux/dev"]["metadata"]["category"] == "text-to-image"
    assert by_id["fal-ai/flux/dev"]["runs_on"]["kind"] == "local"
    echo = by_id["openfal/echo"]["metadata"]
    assert echo["category"] == "other"
    assert echo["description"].startswith("``openfal/echo``: returns its input.")


def test_models_find_and_search(client: httpx.Client) -> None:
    def ids(**params: Any) -> list[str]:
        return [model["endpoint_id"] for model in list_all(client, **params)]

    wanted = ["fal-ai/ovi", "openfal/echo", "not/served"]
    assert ids(endpoint_id=wanted) == ["fal-ai/ovi", "openfal/echo"]
    assert ids(category="training") == ["fal-ai/wan-trainer/i2v-720p",
                                        "fal-ai/wan-trainer/t2v", "fal-ai/wan-trainer/t2v-14b"]
    assert ids(q="Ray-2 FLASH modify") == ["fal-ai/luma-dream-machine/ray-2-flash/modify"]
    assert ids(q="tiger", category="vision") == []
    assert "fal-ai/imagen4/preview" in ids(q="google image")  # description words
    assert ids(status="deprecated") == []
    assert len(ids(status="active")) == len(PAGES) + len(OTHER_ENDPOINTS)


def test_models_expand_openapi(client: httpx.Client) -> None:
    endpoint_id = "fal-ai/kling-video/v2.1/master/text-to-video"
    page = client.get("/v1/models", params={"endpoint_id": endpoint_id,
                                            "expand": "openapi-3.0"}).json()
    served = client.get("/api/openapi/queue/openapi.json",
                        params={"endpoint_id": endpoint_id}).json()
    assert page["models"][0]["openapi"] == served
    plain = client.get("/v1/models", params={"endpoint_id": endpoint_id}).json()
    assert "openapi" not in plain["models"][0]


@pytest.mark.parametrize(("query", "field"), [
    ({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "many"}, "limit"),
    ({"expand": "openapi-2.0"}, "expand"), ({"status": "gone"}, "status")])
def test_models_bad_query_is_a_422(client: httpx.Client, query: dict[str, Any],
                                   field: str) -> None:
    response = client.get("/v1/models", params=query)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["query", field]


def test_cli_lists_where_each_endpoint_runs(catalog_server: ServerProcess,
                                            tmp_path: Path) -> None:
    def models_list(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "openfal", "models", "list", "--server", catalog_server.url,
             "--data-dir", str(tmp_path), *args],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    rows = {cells[0]: cells[1:] for line in models_list().splitlines()
            if len(cells := [cell.strip() for cell in line.split("│")][1:-1]) == 4}
    assert set(rows) >= set(PAGES) | OTHER_ENDPOINTS
    assert rows["fal-ai/sora-2/text-to-video/pro"][:2] == [
        "text-to-video", "unavailable (upstream_not_configured)"]
    assert rows["fal-ai/hidream-i1-full"][1].startswith("local")
    assert rows["openfal/echo"][1] == "local"
    assert rows["fal-ai/flux/dev"][1].startswith("local, ")
    assert "weights" in rows["fal-ai/flux/dev"][1]
    assert "FLUX.1-dev" in rows["fal-ai/flux/dev"][2]
    as_json = json.loads(models_list("--json"))
    assert [m["endpoint_id"] for m in as_json] == sorted(set(PAGES) | OTHER_ENDPOINTS)


def test_cli_names_the_upstream() -> None:
    assert where_it_runs("fal-ai/ovi", {"kind": "upstream", "upstream": "hosted"}) == (
        "upstream hosted", "")
