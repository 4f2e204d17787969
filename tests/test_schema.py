"""Per-endpoint OpenAPI documents."""

from __future__ import annotations

from typing import Any

import httpx

import openfal


def schema(client: httpx.Client, endpoint_id: str) -> dict[str, Any]:
    response = client.get("/api/openapi/queue/openapi.json", params={"endpoint_id": endpoint_id})
    assert response.status_code == 200, response.text
    return response.json()


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_schema_describes_input_output_and_queue_routes(client: httpx.Client) -> None:
    doc = schema(client, "openfal/work")
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["x-fal-metadata"]["endpointId"] == "openfal/work"
    assert set(doc["paths"]) == {
        "/openfal/work", "/openfal/work/requests/{request_id}",
        "/openfal/work/requests/{request_id}/status",
        "/openfal/work/requests/{request_id}/cancel"}
    body = doc["paths"]["/openfal/work"]["post"]["requestBody"]["content"]["application/json"]
    input_schema = resolve(doc, body["schema"]["$ref"])
    # Declaration order is kept, in the object and as x-fal-order-properties.
    declared = ["seconds", "steps", "message", "fail", "marker_dir"]
    assert list(input_schema["properties"]) == declared
    assert input_schema["x-fal-order-properties"] == declared
    assert input_schema["properties"]["seconds"]["minimum"] == 0
    result = doc["paths"]["/openfal/work/requests/{request_id}"]["get"]["responses"]["200"]
    output_schema = resolve(doc, result["content"]["application/json"]["schema"]["$ref"])
    assert set(output_schema["required"]) >= {"request_id", "pid", "steps", "message"}


def test_every_ref_resolves(client: httpx.Client) -> None:
    for endpoint_id in ("openfal/work", "openfal/work/edit", "openfal/echo", "openfal/strict"):
        doc = schema(client, endpoint_id)
        for ref in refs(doc):
            assert isinstance(resolve(doc, ref), dict)


def test_sub_path_schema_and_servers(client: httpx.Client) -> None:
    doc = schema(client, "openfal/work/edit")
    assert "/openfal/work/edit" in doc["paths"]
    assert doc["servers"][0]["url"].endswith("/queue")


def test_untyped_output_has_an_open_schema(client: httpx.Client) -> None:
    doc = schema(client, "openfal/strict")
    result = doc["paths"]["/openfal/strict/requests/{request_id}"]["get"]["responses"]["200"]
    assert result["content"]["application/json"]["schema"]["type"] == "object"


def test_unknown_endpoint_schema_is_404(client: httpx.Client) -> None:
    response = client.get("/api/openapi/queue/openapi.json", params={"endpoint_id": "a/b"})
    assert response.status_code == 404
    assert client.get("/api/openapi/queue/openapi.json").status_code == 422


def test_apps_lists_endpoints_with_schema_urls(client: httpx.Client) -> None:
    listing = client.get("/api/apps").json()["endpoints"]
    by_id = {e["endpoint_id"]: e for e in listing}
    assert {"openfal/echo", "openfal/work", "openfal/work/edit"} <= set(by_id)
    url = by_id["openfal/work/edit"]["openapi_url"]
    assert client.get(url).json()["info"]["title"] == "openfal/work/edit"
    assert by_id["openfal/work"]["config"]["max_multiplexing"] == 4


def test_a_named_base_names_its_variants_but_a_derived_name_is_the_class_own() -> None:
    class Named(openfal.App):
        app_name = "wan"

    class Variant(Named):
        pass

    class Plain(openfal.App):
        pass

    class PlainChild(Plain):
        pass

    assert (Variant.app_name, Plain.app_name, PlainChild.app_name) == (
        "wan", "plain", "plain-child")
