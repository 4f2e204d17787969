"""Apps written with the hosted platform's SDK (``import fal``) served unchanged.

The four apps of ``shared/sdk-apps`` and ``tests/apps/sdk_own.py`` (a requirement from PyPI
in its own environment, an app secret, plain parameters, billing through a ``Response``,
a streaming realtime endpoint) run on one ``--tls`` server with auth and are called through
both official clients. ``flux_schnell.py`` loads ``black-forest-labs/FLUX.1-schnell`` by hub
id: the Hugging Face cache the server sees holds a tiny random pipeline under that id. A
``fal`` package on the server's ``PYTHONPATH`` stands for the real SDK being installed: it
must be shadowed in the SDK apps' runners and left alone everywhere else.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import test_python_client
from openfal.app.loader import AppLoadError, load_app
from openfal.models.tiny import make_tiny
from test_js_client import scenario
from test_python_client import CURRENT_ONLY

from conftest import ServerProcess, wait_for

# The Python client's fixtures, run against this module's own ``tls_server``.
exports = test_python_client.exports
drive = test_python_client.drive

SDK_APPS = Path(__file__).resolve().parents[2] / "shared" / "sdk-apps"
OWN = Path(__file__).parent / "apps" / "sdk_own.py"
PROBE = Path(__file__).parent / "apps" / "fal_probe.py"
FLUX_HUB_ID = "black-forest-labs/FLUX.1-schnell"
SIGNATURE = "signed by the test"
APPS = [f"{SDK_APPS}/greeter.py::Greeter", f"{SDK_APPS}/counter_stream.py::Counter",
        f"{SDK_APPS}/thumbnail.py::Thumbnailer", f"{SDK_APPS}/flux_schnell.py::FluxSchnell",
        f"{OWN}::Pluralizer", f"{PROBE}::FalProbe"]
REAL_FAL = "raise ImportError('the installed fal package was imported')\n"


def fill_hub_cache(hf_home: Path, hub_id: str, pipeline: Path) -> None:
    """Lay ``pipeline`` out in the Hugging Face cache as the snapshot of ``hub_id``."""
    repo = hf_home / "hub" / f"models--{hub_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots").mkdir()
    pipeline.rename(repo / "snapshots" / commit)


@pytest.fixture(scope="module")
def installed_fal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a ``fal`` package that fails when imported."""
    folder = tmp_path_factory.mktemp("site")
    (folder / "fal").mkdir()
    (folder / "fal" / "__init__.py").write_text(REAL_FAL)
    return folder


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory,
               installed_fal: Path) -> Iterator[ServerProcess]:
    hf_home = tmp_path_factory.mktemp("hf")
    fill_hub_cache(hf_home, FLUX_HUB_ID, make_tiny("flux", tmp_path_factory.mktemp("flux")))
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(installed_fal),
           "OPENFAL_PERSISTENT_DIR": str(tmp_path_factory.mktemp("persistent"))}
    args = ["--tls", *[arg for ref in APPS for arg in ("--app", ref)]]
    server = ServerProcess(tmp_path_factory.mktemp("data"), args, env=env).start()
    with server.client(verify=False, headers={
            "authorization": f"Key {server.admin_key}"}) as admin:
        admin.put("/api/secrets/PLURALIZER_SIGNATURE",
                  json={"value": SIGNATURE}).raise_for_status()
    yield server
    server.stop()
    server.reap_leftovers()


@CURRENT_ONLY
def test_sdk_apps_through_the_python_client(drive, release) -> None:
    out = drive("sdk_apps")
    assert out["greet"] == {"greeting": "Hello, Ada! Hello, Ada!"}
    assert out["shout"] == {"greeting": "HELLO, ADA!"}
    blank = out["blank"]
    assert blank["status_code"] == 422, blank
    assert "must not be blank" in str(blank), blank
    assert out["count"] == {"count": 3}
    # The app's own /stream endpoint: each event it sent, the last being the result.
    assert out["stream"] == [{"count": n} for n in (1, 2, 3, 4)]
    thumbnail = out["thumbnail"]
    assert (thumbnail["original_width"], thumbnail["original_height"]) == (32, 16)
    assert (thumbnail["image"]["width"], thumbnail["image"]["height"]) == (8, 4)
    assert out["thumbnail_image"]["size"] == [8, 4]
    assert out["thumbnail_inline"]["image"]["width"] == 32
    assert out["realtime"] == {"text": "desserts"}
    assert out["realtime_stream"] == [{"word": letter} for letter in "abc"]
    plural = out["plural"]
    assert plural["plural"] == "octopi"  # inflection, installed for this app only
    assert plural["signed"] == f"octopi ({SIGNATURE})"
    assert plural["request_id"]
    assert out["plural_error"]["status_code"] == 400
    assert out["count_words"] == {"text": "hey hey hey"}
    assert out["file"]["url"].startswith("data:text/plain;base64,")
    assert out["size"] == {"size": [32, 16], "mode": "RGB"}
    flux = out["flux"]
    assert [len(output["images"]) for output in flux] == [1, 1]
    assert flux[0]["images"][0]["width"] == flux[0]["images"][0]["height"] == 256
    assert flux[0]["seed"] == 7
    first, second = out["flux_images"]
    assert first == second  # same seed, same image


def test_sdk_apps_through_the_js_client(tls_server: ServerProcess, exports: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", exports["SSL_CERT_FILE"])
    out = scenario(tls_server, "sdkApps", fal_key=tls_server.admin_key)
    assert out["greet"] == {"greeting": "Hello, Ada! Hello, Ada!"}
    assert out["shout"] == {"greeting": "HELLO, ADA!"}
    assert out["blank"]["error"]["status"] == 422
    assert out["blank"]["error"]["isValidationError"]
    assert out["count"] == {"count": 2}
    assert out["events"] == [{"count": n} for n in (1, 2, 3)]
    assert out["streamDone"] == {"count": 3}
    assert (out["thumbnail"]["original_width"], out["thumbnail"]["original_height"]) == (24, 12)
    assert out["thumbnail"]["image"]["width"] == 8
    assert out["plural"]["plural"] == "mice"
    assert out["flux"]["seed"] == 7
    assert out["realtime"] == {"text": "desserts"}
    assert out["opened"][0].startswith("wss://fal.run/openfal/counter/realtime")


def test_usage_records_the_billable_units_an_sdk_app_set(tls_server: ServerProcess) -> None:
    with tls_server.client(verify=False, headers={
            "authorization": f"Key {tls_server.admin_key}"}) as admin:
        before = pluralizer_units(admin)
        response = admin.post("/openfal/pluralizer", json={"word": "person"})
        assert response.status_code == 200, response.text
        assert response.json()["plural"] == "people"
        # A direct run's outcome is committed just after it is answered.
        wait_for(lambda: pluralizer_units(admin) == before + len("person"), timeout=10)


def pluralizer_units(admin: Any) -> float:
    usage = admin.get("/api/usage")
    assert usage.status_code == 200, usage.text
    return sum(row["billable_units"] for row in usage.json()["usage"]
               if row["endpoint_id"] == "openfal/pluralizer")


def test_only_sdk_apps_see_the_compatibility_layer(tls_server: ServerProcess) -> None:
    with tls_server.client(verify=False, headers={
            "authorization": f"Key {tls_server.admin_key}"}) as admin:
        probe = admin.post("/openfal/fal-probe", json={})
    assert probe.status_code == 200, probe.text
    assert probe.json() == {"fal": "ImportError: the installed fal package was imported"}


def test_openapi_describes_sdk_endpoints(tls_server: ServerProcess) -> None:
    with tls_server.client(verify=False, headers={
            "authorization": f"Key {tls_server.admin_key}"}) as client:
        spec = client.get("/api/openapi/queue/openapi.json",
                          params={"endpoint_id": "openfal/greeter"})
    assert spec.status_code == 200, spec.text
    schemas = spec.json()["components"]["schemas"]
    assert schemas["GreetInput"]["properties"]["times"]["maximum"] == 5
    assert "GreetOutput" in schemas


# Loading, in this process


def write_app(tmp_path: Path, body: str) -> str:
    path = tmp_path / "sdk_app.py"
    path.write_text("import fal\nfrom pydantic import BaseModel\n\n\n"
                    "class In(BaseModel):\n    text: str\n\n\n" + textwrap.dedent(body))
    return f"{path}::MyApp"


def test_loading_an_sdk_app_leaves_fal_to_the_rest_of_the_process(
        tmp_path: Path, installed_fal: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(installed_fal))
    sentinel = object()
    monkeypatch.setitem(sys.modules, "fal", sentinel)  # as if the real one were imported
    cls = load_app(write_app(tmp_path, """
        class MyApp(fal.App, keep_alive=5, max_concurrency=3, name="renamed"):
            machine_type = "GPU-H100"
            requirements = ["inflection"]

            @fal.endpoint("/")
            def run(self, input: In) -> In:
                return input
        """))
    assert sys.modules["fal"] is sentinel
    assert (cls.app_name, cls.keep_alive, cls.max_concurrency) == ("renamed", 5, 3)
    assert cls.requirements == ["inflection"]
    assert cls.gpu_count() == 1
    assert list(cls.endpoints()) == ["/"]


@pytest.mark.parametrize(("declaration", "name"), [
    ("class MyApp(fal.App):", "my-app"),
    ("class MyApp(fal.App, name='given'):", "given"),
    ("class MyApp(fal.App):\n    app_name = 'chosen'", "chosen"),
    ("class ONNXModel2(fal.App):", "o-n-n-x-model"),  # the SDK's rule: capitalised words
])
def test_app_names_follow_the_sdk(tmp_path: Path, declaration: str, name: str) -> None:
    ref = write_app(tmp_path, declaration + """
    @fal.endpoint("/")
    def run(self, input: In) -> In:
        return input
MyApp = ONNXModel2 if "ONNXModel2" in globals() else MyApp
""")
    assert load_app(ref).app_name == name


@pytest.mark.parametrize(("body", "named"), [
    ("@fal.endpoint('/ws', is_websocket=True)\n    async def ws(self, socket): ...",
     "is_websocket=True"),
    ("@fal.endpoint('/', health_check=object())\n    def run(self, input: In) -> In: ...",
     "health_check"),
    ("image = object()\n    @fal.endpoint('/')\n    def run(self, input: In) -> In: ...",
     "container images"),
    ("retry_config = {}\n    @fal.endpoint('/')\n    def run(self, input: In) -> In: ...",
     "retry_config"),
    ("@fal.realtime('/rt', max_batch_size=4)\n    def rt(self, input: In) -> In: ...",
     "max_batch_size"),
    ("@fal.realtime('/rt')\n    async def rt(self, inputs: AsyncIterator[In]) -> In: ...",
     "streamed inputs"),
])
def test_unsupported_sdk_features_fail_at_load_naming_them(
        tmp_path: Path, body: str, named: str) -> None:
    ref = write_app(tmp_path, "from collections.abc import AsyncIterator\n\n\n"
                              f"class MyApp(fal.App):\n    {body}\n")
    with pytest.raises(AppLoadError, match="SdkFeatureUnsupported") as raised:
        load_app(ref)
    assert named in str(raised.value)


def test_sdk_modules_openfal_does_not_serve_fail_at_load(tmp_path: Path) -> None:
    path = tmp_path / "distributed.py"
    path.write_text("import fal\nimport fal.distributed\n")
    with pytest.raises(AppLoadError, match=r"fal\.distributed is not part of the SDK surface"):
        load_app(f"{path}::MyApp")
