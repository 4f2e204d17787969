"""Fuzzing the whole server through its own OpenAPI document (``GET /openapi.json``).

schemathesis generates valid and invalid requests for every documented operation of a real
server (auth on, the test apps, no built-in models, no network allowed: media URLs the
fuzzer makes up cannot be fetched and are 422s) and checks every answer: no 5xx, a
documented status, content type, headers and schema, no valid request refused, no route
that needs a key answering without one. A second test follows queued requests through the
document's links, so the status, result, cancel and stream routes answer for real ids too.

Run size (each test prints its own): fuzzing, 37 operations and 2,105 test cases (up to
MAX_EXAMPLES generated per operation, plus schemathesis' coverage cases); queued requests,
80 submits on 4 operations followed by their 16 request routes and the attempts route,
about 390 calls. The file takes about 40 s on 2 cores.

The last tests pin down the bugs found while fuzzing, so they stay fixed whatever the
fuzzer happens to generate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from openfal.testing import ServerProcess

from conftest import APPS

FUZZED_APPS = ("Strict", "Work", "Media", "PublicEcho")
# Work's root and /partials endpoints crash, fail or sleep when asked to.
FAILS_BY_DESIGN = r"^(/queue)?/openfal/work(/partials)?$"
MAX_EXAMPLES = 25
QUEUED_EXAMPLES = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance,
          positive_data_acceptance, ignored_auth]
# Refusals of valid requests for what their shape cannot tell: a file URL that leads
# nowhere (the fuzzer's never lead anywhere), a result asked for before the request ended,
# the result of a cancelled one, a cancel after the end.
NOT_FROM_THE_SHAPE = {"file_download_error", "image_load_error", "request_in_progress",
                      "client_cancelled", "ALREADY_COMPLETED"}


@dataclass
class RunSize:
    operations: set[str] = field(default_factory=set)
    cases: int = 0


@pytest.fixture
def fuzz_server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    args = [arg for name in FUZZED_APPS for arg in ("--app", f"{APPS}::{name}")]
    return start_server(*args, "--no-builtin", auth=True)


@pytest.fixture
def fuzz_key(fuzz_server: ServerProcess) -> str:
    """The fuzzer's own ADMIN key: whatever it does to keys leaves the server's alone."""
    with fuzz_server.client(headers={"Authorization": f"Key {fuzz_server.admin_key}"}) as c:
        response = c.post("/api/keys", json={"scope": "ADMIN", "name": "fuzzer"})
    response.raise_for_status()
    return f"Key {response.json()['key']}"


@pytest.fixture
def api_schema(fuzz_server: ServerProcess, fuzz_key: str) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict({
        "auth": {"openapi": {"Key": {"api_key": fuzz_key}}},
        # Unknown headers and query parameters are ignored, as HTTP servers do.
        "generation": {"allow-extra-parameters": False},
    })
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", config=config,
                                         headers={"Authorization": fuzz_key})


@pytest.fixture
def run_size(capsys: pytest.CaptureFixture[str]) -> Iterator[RunSize]:
    size = RunSize()
    yield size
    with capsys.disabled():
        print(f"\nschemathesis: {len(size.operations)} operations, {size.cases} test cases")


fuzzed = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex=FAILS_BY_DESIGN)


@fuzzed.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_answers_as_documented(case: schemathesis.Case,
                                                     run_size: RunSize) -> None:
    _checked_call(case, run_size)


def _checked_call(case: schemathesis.Case, run_size: RunSize) -> schemathesis.Response:
    run_size.operations.add(case.operation.label)
    run_size.cases += 1
    response = case.call(timeout=30)
    case.validate_response(response, checks=_checks_for(response))
    return response


def _checks_for(response: schemathesis.Response) -> list[schemathesis.CheckFunction]:
    """Every check, but where the documented answer depends on more than the request's
    shape: a 504 for a start deadline the caller chose (a tiny ``X-Fal-Request-Timeout``)
    and the refusals in NOT_FROM_THE_SHAPE are right, though no check can know."""
    excluded: set[schemathesis.CheckFunction] = set()
    if response.headers.get("x-fal-request-timeout-type") == ["user"]:
        excluded.add(not_a_server_error)
    if 400 <= response.status_code < 500 and _error_kinds(response.json()) <= NOT_FROM_THE_SHAPE:
        excluded.add(positive_data_acceptance)
    return [check for check in CHECKS if check not in excluded]


def _error_kinds(body: Any) -> set[Any]:
    """The ``error_type`` of an error body (a cancel's: its ``status``), or the ``type`` of
    each of its 422 items."""
    if not isinstance(body, dict):
        return {None}
    detail = body.get("detail")
    if isinstance(detail, list):
        return {item.get("type") if isinstance(item, dict) else None for item in detail}
    return {body.get("error_type") or body.get("status")}


# Submits whose answer leads somewhere: the routes of the request each one queued.
submits = schemathesis.pytest.from_fixture("api_schema").include(
    method="POST", path_regex=r"^/queue/").exclude(path_regex=FAILS_BY_DESIGN)


@submits.parametrize()
@settings(max_examples=QUEUED_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck), phases=[Phase.generate])
def test_queued_requests_as_documented(case: schemathesis.Case, fuzz_key: str,
                                       run_size: RunSize) -> None:
    """A submit, then the request it queued through the document's links, with its real
    id: status, result, attempts and cancel while it may still run, then its status stream
    (which ends with the request) and its final result."""
    response = _checked_call(case, run_size)
    if response.status_code != 200:
        return
    links = case.operation.definition.raw["responses"]["200"]["links"]
    schema, request = case.operation.schema, {
        "path_parameters": {"request_id": response.json()["request_id"]},
        "headers": {"Authorization": fuzz_key}}  # the submitter's: another key sees a 404
    for name in ("status", "result", "attempts", "cancel"):
        _checked_call(_linked(schema, links[name]["operationRef"]).Case(**request), run_size)
    status = _linked(schema, links["status"]["operationRef"])
    _checked_call(schema[status.path + "/stream"]["GET"].Case(**request), run_size)
    _checked_call(_linked(schema, links["result"]["operationRef"]).Case(**request), run_size)


def _linked(schema: schemathesis.BaseSchema, operation_ref: str) -> schemathesis.APIOperation:
    """The operation a link points at: ``#/paths/<escaped path>/<method>``."""
    escaped, method = operation_ref.removeprefix("#/paths/").rsplit("/", 1)
    return schema[escaped.replace("~1", "/").replace("~0", "~")][method.upper()]


# The document itself
def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_document_refs_resolve_and_security_follows_the_guards(
        fuzz_server: ServerProcess, fuzz_key: str) -> None:
    with fuzz_server.client() as c:
        assert c.get("/openapi.json").status_code == 401
        document = c.get("/openapi.json", headers={"Authorization": fuzz_key}).json()
    assert document["openapi"] == "3.1.0"
    for ref in _refs(document):
        assert isinstance(_resolve(document, ref), dict), ref
    scheme = document["components"]["securitySchemes"]["Key"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header",
                                                             "Authorization")
    paths = document["paths"]
    required, optional = [{"Key": []}], [{"Key": []}, {}]
    assert "security" not in paths["/health"]["get"]
    assert paths["/api/keys"]["post"]["security"] == required
    assert set(paths["/api/keys"]["post"]["responses"]) >= {"201", "401", "403", "422"}
    assert paths["/openfal/strict"]["post"]["security"] == required
    assert paths["/queue/openfal/strict"]["post"]["security"] == required
    assert paths["/openfal/public-echo"]["post"]["security"] == optional
    status = paths["/queue/openfal/strict/requests/{request_id}/status"]["get"]
    assert status["security"] == optional


def test_document_without_auth_and_per_endpoint_parts(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    operations = [op for item in document["paths"].values() for op in item.values()]
    assert not any("security" in op or "401" in op["responses"] for op in operations)
    run = document["paths"]["/openfal/work/edit"]["post"]
    submit = document["paths"]["/queue/openfal/work/edit"]["post"]
    assert run["requestBody"] == submit["requestBody"]
    assert run["requestBody"]["required"] is False  # an empty body is {}: all defaults
    assert document["paths"]["/openfal/strict"]["post"]["requestBody"]["required"] is True
    validation = _resolve(document, submit["responses"]["422"]["content"][
        "application/json"]["schema"]["$ref"])
    assert validation["properties"]["detail"]["type"] == "array"
    # One result route per app: the output of whichever of its endpoints was called.
    result = document["paths"]["/queue/openfal/work/requests/{request_id}"]["get"]
    output = result["responses"]["200"]["content"]["application/json"]["schema"]
    assert len(output["anyOf"]) == 2  # WorkOutput (/, /edit) and /partials' dict


# Bugs found while fuzzing: by the fuzzer, or by trying what it may send
@pytest.mark.parametrize("path", ["/openfal/strict", "/queue/openfal/strict", "/tokens/",
                                  "/api/keys", "/storage/upload/initiate"])
def test_body_that_is_not_utf8_is_a_422(client: httpx.Client, path: str) -> None:
    response = client.post(path, content=b"\xff\xfe{", headers={
        "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]


@pytest.mark.parametrize("body", [
    {"image_url": "http://[::1/x.png"},  # an IPv6 literal without its "]"
    {"image_url": "http://example.com:99999/x.png"},  # a port out of range
    {"document": "http://example.com:port/x.txt"},  # a port that is not a number
    # A public address, so only httpx's URL check stops it (before any connection).
    {"image_url": "http://1.1.1.1/a\u0000b.png"},
])
def test_malformed_file_url_is_a_422(client: httpx.Client, body: dict[str, str]) -> None:
    response = client.post("/openfal/media", json=body)
    assert response.status_code == 422, response.text
    (item,) = response.json()["detail"]
    assert item["loc"] == ["body", *body]


@pytest.mark.parametrize("query", ["since=nan", "until=inf", "since=-1e400"])
def test_usage_times_must_be_finite(client: httpx.Client, query: str) -> None:
    response = client.get(f"/api/usage?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", query.split("=")[0]]


def test_queue_length_must_be_ascii_digits(client: httpx.Client) -> None:
    response = client.post("/queue/openfal/strict", params={"fal_max_queue_length": "²"},
                           json={"prompt": "x"})
    assert response.status_code == 422, response.text
