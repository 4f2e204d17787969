"""The client commands, ``openfal run``, ``apps`` and ``runners``, run as real processes."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from openfal.cli.client import (
    CLIError,
    StatusDisplay,
    build_input,
    download_files,
    file_objects,
)

from conftest import ServerProcess, wait_for

NOISY_APP = f"{Path(__file__).parent / 'apps' / 'noisy.py'}::Noisy"
# What decides which server and key the CLI uses; tests set them explicitly.
CLIENT_VARIABLES = ("OPENFAL_SERVER", "OPENFAL_KEY", "OPENFAL_DATA_DIR", "FAL_KEY",
                    "SSL_CERT_FILE", "SSL_CERT_DIR", "COLUMNS")


def openfal(*args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openfal", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def openfal_at_home(home: Path, *args: str,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``openfal`` as a user whose home is ``home`` and who set only ``env``."""
    clean = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    return subprocess.run([sys.executable, "-m", "openfal", *args], capture_output=True,
                          text=True, timeout=60, env={**clean, "HOME": str(home), **(env or {})})


def run(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return openfal("run", *args, "--server", server.url)


def test_run_echo_prints_the_result(server: ServerProcess) -> None:
    done = run(server, "openfal/echo", "-a", "prompt=hello", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"text": "hello"}'
    assert "request " in done.stderr


def test_run_prints_pretty_json_by_default(server: ServerProcess) -> None:
    done = run(server, "openfal/echo", "-a", "prompt=hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout == '{\n  "text": "hello"\n}\n'


def test_server_comes_from_the_environment(server: ServerProcess) -> None:
    done = openfal("run", "openfal/echo", "-a", "prompt=env", "--json",
                   env={"OPENFAL_SERVER": server.url})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"text": "env"}


def test_args_override_input(server: ServerProcess, tmp_path: Path) -> None:
    done = run(server, "openfal/echo", "--input", '{"prompt": "from input"}', "-a", "prompt=b",
               "--json")
    assert json.loads(done.stdout) == {"text": "b"}
    input_file = tmp_path / "input.json"
    input_file.write_text('{"prompt": "from file"}')
    done = run(server, "openfal/echo", "--input", f"@{input_file}", "--json")
    assert json.loads(done.stdout) == {"text": "from file"}


def test_run_shows_logs_and_ends_with_the_result(server: ServerProcess) -> None:
    done = run(server, "openfal/work", "-a", "steps=3", "-a", "seconds=0.6",
               "-a", "message=hi there", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["steps"] == 3
    assert result["message"] == "hi there"
    assert done.stderr.count("start hi there") == 1
    assert "testapps: logged through logging" in done.stderr


def test_failed_request_exits_1_with_the_error(server: ServerProcess) -> None:
    done = run(server, "openfal/work", "-a", "fail=error")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "request failed: Internal Server Error (runner_server_error)" in done.stderr
    assert "RuntimeError: boom" in done.stderr


def test_app_error_shows_its_detail(server: ServerProcess) -> None:
    done = run(server, "openfal/work", "-a", "fail=app")
    assert done.returncode == 1
    assert "request failed: bad message" in done.stderr


@pytest.mark.parametrize(("endpoint", "args", "expected"), [
    ("openfal/strict", ["-a", "prompt=x", "-a", "bogus=1"],
     "body.bogus: Extra inputs are not permitted"),
    ("openfal/echo", [], "body.prompt: Field required"),
])
def test_invalid_input_names_the_field(server: ServerProcess, endpoint: str, args: list[str],
                                       expected: str) -> None:
    done = run(server, endpoint, *args)
    assert done.returncode == 1
    assert "invalid input" in done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_endpoint(server: ServerProcess) -> None:
    done = run(server, "openfal/nope", "-a", "prompt=x")
    assert done.returncode == 1
    assert "Endpoint 'openfal/nope' not found (endpoint_not_found)" in done.stderr


def test_bad_input_option_is_reported(server: ServerProcess) -> None:
    done = run(server, "openfal/echo", "--input", "[1, 2]")
    assert done.returncode == 1
    assert "--input must be a JSON object" in done.stderr


def test_unreachable_server() -> None:
    for command in (["run", "openfal/echo", "-a", "prompt=x"], ["apps"], ["runners"]):
        done = openfal(*command, "--server", "http://127.0.0.1:1")
        assert done.returncode == 1
        assert "cannot reach openfal at http://127.0.0.1:1" in done.stderr
        assert "Traceback" not in done.stderr


def test_ctrl_c_cancels_the_request(server: ServerProcess, client: httpx.Client) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "openfal", "run", "openfal/work", "-a", "steps=100",
         "-a", "seconds=10", "--server", server.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    request_id = proc.stderr.readline().split()[-1]
    assert "start working" in proc.stderr.readline()  # it is running now
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert stdout == ""
    assert "cancellation requested" in stderr
    status_url = f"/queue/openfal/work/requests/{request_id}/status"
    deadline = time.monotonic() + 30
    while (status := client.get(status_url).json())["status"] != "COMPLETED":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["error_type"] == "client_cancelled"


def test_apps_lists_the_endpoints(server: ServerProcess) -> None:
    done = openfal("apps", "--json", "--server", server.url)
    assert done.returncode == 0, done.stderr
    endpoints = {e["endpoint_id"]: e for e in json.loads(done.stdout)["endpoints"]}
    assert {"openfal/echo", "openfal/work", "openfal/strict"} <= set(endpoints)
    echo = endpoints["openfal/echo"]
    assert echo["openapi_url"].endswith("/api/openapi/queue/openapi.json?endpoint_id=openfal/echo")
    assert httpx.get(echo["openapi_url"]).status_code == 200


def test_apps_table(server: ServerProcess) -> None:
    done = openfal("apps", "--server", server.url, env={"COLUMNS": "300"})
    assert done.returncode == 0, done.stderr
    echo_row = next(line for line in done.stdout.splitlines() if "openfal/echo" in line)
    assert "openfal.models.echo::Echo" in echo_row
    assert "300s" in echo_row  # its keep_alive
    assert "64" in echo_row  # its max_multiplexing


def test_runners_after_a_run(server: ServerProcess) -> None:
    assert run(server, "openfal/echo", "-a", "prompt=warm").returncode == 0
    done = openfal("runners", "--json", "--server", server.url)
    assert done.returncode == 0, done.stderr
    echo = [r for r in json.loads(done.stdout)["runners"] if r["app_id"] == "openfal/echo"]
    assert echo
    assert echo[0]["state"] in {"idle", "running"}
    assert isinstance(echo[0]["pid"], int)
    table = openfal("runners", "--server", server.url, env={"COLUMNS": "300"})
    assert echo[0]["runner_id"] in table.stdout


def test_run_says_what_its_times_cover(server: ServerProcess) -> None:
    done = run(server, "openfal/echo", "-a", "prompt=timed")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^done in \d+\.\d\ds, \d+\.\d\ds of it on the runner \(the whole "
                     r"endpoint call, model loading included\)$", done.stderr, re.MULTILINE)
    assert "inference time" not in done.stderr


def test_tables_are_not_cut_when_piped(server: ServerProcess) -> None:
    listing = json.loads(openfal("apps", "--json", "--server", server.url).stdout)
    done = openfal("apps", "--server", server.url, env={"COLUMNS": "60"})
    assert done.returncode == 0, done.stderr
    for endpoint in listing["endpoints"]:
        row = next(line for line in done.stdout.splitlines()
                   if f"│ {endpoint['endpoint_id']} " in line)
        assert endpoint["app_ref"] in row
        assert endpoint["openapi_url"] in row


def _table_rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in output.splitlines() if line.startswith("│")]


def test_usage_shows_which_apps_report_no_billable_units(server: ServerProcess) -> None:
    assert run(server, "openfal/echo", "-a", "prompt=usage").returncode == 0
    assert run(server, "openfal/work", "-a", "steps=3").returncode == 0
    done = openfal("usage", "--server", server.url)
    assert done.returncode == 0, done.stderr
    units = {row[1]: row[-1] for row in _table_rows(done.stdout)}
    assert units["openfal/echo"] == "-"
    assert float(units["openfal/work"]) >= 3
    assert "-: none reported" in done.stdout


# --- which server, which key -----------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The home of a user with no ~/.openfal yet."""
    path = tmp_path / "home"
    path.mkdir()
    return path


HOSTED_KEY = {"FAL_KEY": "hosted-key-id:hosted-key-secret"}


def test_commands_find_the_default_data_dirs_server_and_key(
        start_server: Callable[..., ServerProcess], home: Path) -> None:
    start_server(data_dir=home / ".openfal", auth=True)
    done = openfal_at_home(home, "run", "openfal/echo", "-a", "prompt=found", "--json",
                           env=HOSTED_KEY)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"text": "found"}
    done = openfal_at_home(home, "keys", "create", "--name", "ci", env=HOSTED_KEY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("created a new API key (shown once):\n")


@pytest.mark.parametrize("how", ["option", "variable"])
def test_commands_follow_the_data_dir_of_the_server(
        start_server: Callable[..., ServerProcess], home: Path, tmp_path: Path,
        how: str) -> None:
    data_dir = tmp_path / "elsewhere"
    start_server(data_dir=data_dir, auth=True)
    args, env = ((["--data-dir", str(data_dir)], HOSTED_KEY) if how == "option"
                 else ([], {**HOSTED_KEY, "OPENFAL_DATA_DIR": str(data_dir)}))
    done = openfal_at_home(home, "keys", "list", "--json", *args, env=env)
    assert done.returncode == 0, done.stderr
    assert [key["scope"] for key in json.loads(done.stdout)["keys"]] == ["ADMIN"]
    done = openfal_at_home(home, "apps", "--json", *args, env=env)
    assert done.returncode == 0, done.stderr


def test_a_refused_key_says_which_key_was_sent(start_server: Callable[..., ServerProcess],
                                               home: Path) -> None:
    server = start_server(auth=True)
    for env, expected in (({}, "no key was sent: set OPENFAL_KEY, or point --data-dir at the "
                                "server's data dir"),
                          ({"OPENFAL_KEY": "nope:nope"}, "the key sent came from OPENFAL_KEY")):
        done = openfal_at_home(home, "keys", "list", "--server", server.url, env=env)
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1, done.stderr
        assert "(unauthorized); " + expected in done.stderr


def test_a_tls_server_is_found_and_trusted(start_server: Callable[..., ServerProcess],
                                           home: Path, tmp_path: Path) -> None:
    server = start_server("--tls", data_dir=home / ".openfal", auth=True)
    done = openfal_at_home(home, "keys", "list", "--json")
    assert done.returncode == 0, done.stderr

    stranger = tmp_path / "stranger"  # knows the URL, not the CA
    done = openfal_at_home(stranger, "apps", "--server", server.url)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"the certificate of {server.url} is not trusted (" in done.stderr
    assert "--data-dir" in done.stderr and "cannot reach" not in done.stderr

    exports = openfal_at_home(home, "env")
    assert exports.returncode == 0, exports.stderr
    env = dict(line.removeprefix("export ").split("=", 1)
               for line in exports.stdout.splitlines())
    assert env["OPENFAL_SERVER"] == server.url
    assert env["OPENFAL_KEY"] == server.admin_key
    done = openfal_at_home(stranger, "keys", "list", "--json", env=env)
    assert done.returncode == 0, done.stderr


def test_import_and_setup_output_stays_out_of_request_logs(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--no-builtin", "--app", NOISY_APP)
    done = run(server, "openfal/noisy", "-a", "text=hi")
    assert done.returncode == 0, done.stderr
    for own in ("noisy: the request's own output: hi", "noisy: the request's own warning",
                "noisy: the request's own log"):
        assert own in done.stderr
    assert "at import" not in done.stderr
    assert "in setup" not in done.stderr
    # The runner's stderr, in the server's log, has them instead.
    wait_for(lambda: all(line in "".join(server.output) for line in (
        "noisy_lib: logged at import", "noisy_lib: warned at import",
        "noisy_lib: printed at import", "noisy: logged in setup", "noisy: warned in setup")),
        what="the import and setup output in the server's log")


# --- units ---------------------------------------------------------------------------------


def test_build_input() -> None:
    assert build_input('{"a": 1, "b": "x"}', ["b=2", "c=hello", "d=[1, 2]", "e=a=b",
                                                "f=true", "g="]) == {
        "a": 1, "b": 2, "c": "hello", "d": [1, 2], "e": "a=b", "f": True, "g": ""}
    with pytest.raises(CLIError, match="key=value"):
        build_input(None, ["novalue"])
    with pytest.raises(CLIError, match="not valid JSON"):
        build_input("{", [])


def _log(message: str, second: int) -> dict[str, str]:
    return {"message": message, "level": "INFO", "source": "user",
            "timestamp": f"2026-01-01T00:00:0{second}+00:00"}


@pytest.mark.parametrize("events", [
    # Each event with every line so far, or with only the lines not sent before.
    [[_log("one", 1)], [_log("one", 1), _log("two", 2)], [_log("one", 1), _log("two", 2)]],
    [[_log("one", 1)], [_log("two", 2)], []],
])
def test_each_log_line_is_printed_once(events: list[list[dict[str, str]]],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    display = StatusDisplay()
    for logs in events:
        display.update({"status": "IN_PROGRESS", "logs": logs})
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[-1] for line in lines] == ["one", "two"]


def test_file_objects_are_found_at_any_depth() -> None:
    result = {"images": [{"url": "a", "width": 1}, {"url": "b"}], "video": {"url": "c"},
              "nested": {"deep": [[{"url": "d"}]]}, "seed": 3, "url_like": "e"}
    assert [f["url"] for f in file_objects(result)] == ["a", "b", "c", "d"]


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "served"
    (root / "images").mkdir(parents=True)
    (root / "images" / "cat.png").write_bytes(b"\x89PNG cat")
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_files(file_server: str, tmp_path: Path) -> None:
    payload = base64.b64encode(b"hello file").decode()
    result = {
        "images": [{"url": f"{file_server}/images/cat.png", "content_type": "image/png"},
                   {"url": f"{file_server}/images/cat.png", "file_name": "../../named.png"}],
        "text": {"url": f"data:text/plain;base64,{payload}", "content_type": "text/plain"},
        "raw": {"url": "data:,plain%20text"},
    }
    out = tmp_path / "out"
    with httpx.Client() as client:
        saved = download_files(client, result, out)
    assert [p.name for p in saved] == ["cat.png", "named.png", "file-2.txt", "file-3"]
    assert all(p.parent == out for p in saved)
    assert [p.read_bytes() for p in saved] == [b"\x89PNG cat", b"\x89PNG cat", b"hello file",
                                               b"plain text"]
    with httpx.Client() as client:
        again = download_files(client, {"url": f"{file_server}/images/cat.png"}, out)
    assert again == [out / "cat-1.png"]


def test_download_failure_is_reported(file_server: str, tmp_path: Path) -> None:
    with httpx.Client() as client, pytest.raises(CLIError, match="HTTP 404"):
        download_files(client, {"url": f"{file_server}/missing.png"}, tmp_path)


def test_downloads_send_the_key_to_the_server_alone(file_server: str, tmp_path: Path) -> None:
    seen: list[str | None] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, content=b"x")

    transport = httpx.MockTransport(record)
    with httpx.Client(base_url="http://openfal.test", transport=transport,
                      headers={"authorization": "Key id:secret"}) as client:
        download_files(client, {"a": {"url": "http://openfal.test/files/a/a.png"},
                                "b": {"url": "http://elsewhere.test/b.png"}}, tmp_path)
    assert seen == ["Key id:secret", None]
