"""``openfal serve`` told to do something it cannot: one line on stderr, status 1, no
traceback; and its flags as ``--help`` shows them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from openfal.cli import main as cli_main
from openfal.server import Settings

from conftest import APPS, ServerProcess


def serve(*args: str, data_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openfal", "serve", "--port", "0", "--data-dir", str(data_dir),
         "--no-auth", *args],
        capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def assert_one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def app_file(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "user_app.py"
    path.write_text(source)
    return path


ECHO_AGAIN = """
import openfal

class EchoAgain(openfal.App):
    app_name = "echo"

    @openfal.endpoint("/")
    def run(self) -> dict:
        return {}
"""


def test_missing_app_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.py"
    done = serve("--app", f"{missing}::App", data_dir=tmp_path / "data")
    assert_one_line_error(done, f"app file {missing} does not exist")


def test_missing_class_names_the_apps_the_file_has(tmp_path: Path) -> None:
    done = serve("--app", f"{APPS}::Nope", data_dir=tmp_path / "data")
    assert_one_line_error(done, f"{APPS} has no 'Nope'", "its apps: ", "Work")


def test_class_that_is_not_an_app(tmp_path: Path) -> None:
    done = serve("--app", f"{APPS}::WorkInput", data_dir=tmp_path / "data")
    assert_one_line_error(done, "'WorkInput' is not an openfal.App (or fal.App) subclass")


@pytest.mark.parametrize(("source", "expected"), [
    ("import os\nimport no_such_module_here\n",
     "failed at line 2: ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("def broken(:\n    pass\n", "failed at line 1: SyntaxError: "),
    ("raise RuntimeError('the app refuses\\nto load')\n",
     "failed at line 1: RuntimeError: the app refuses to load"),
])
def test_app_file_that_fails_to_import(tmp_path: Path, source: str, expected: str) -> None:
    path = app_file(tmp_path, source)
    done = serve("--app", f"{path}::App", data_dir=tmp_path / "data")
    assert_one_line_error(done, f"importing {path} ", expected)


def test_module_that_fails_to_import(tmp_path: Path) -> None:
    done = serve("--app", "no_such_package.apps::App", data_dir=tmp_path / "data")
    assert_one_line_error(
        done, "importing module 'no_such_package.apps' failed: ModuleNotFoundError")


def test_endpoint_that_collides_with_a_served_one(tmp_path: Path) -> None:
    path = app_file(tmp_path, ECHO_AGAIN)
    done = serve("--app", f"{path}::EchoAgain", data_dir=tmp_path / "data")
    assert_one_line_error(done, f"{path}::EchoAgain: endpoint 'openfal/echo' is already "
                          "served by openfal.models.echo::Echo")


# These three need the checks of openfal.server.serve() (it raises ConfigError).

def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "openfal", "serve", "--port", str(port), "--data-dir",
             str(tmp_path / "data"), "--no-auth", "--no-builtin"],
            capture_output=True, text=True, timeout=60)
    assert_one_line_error(done, str(port))


def test_data_dir_held_by_another_server(tmp_path: Path,
                                        start_server: Callable[..., ServerProcess]) -> None:
    running = start_server()
    done = serve("--no-builtin", data_dir=running.data_dir, timeout=30)
    assert_one_line_error(done, str(running.data_dir))


def test_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = serve("--no-builtin", data_dir=blocker / "data", timeout=30)
    assert_one_line_error(done, str(blocker))


# --- flags ---------------------------------------------------------------------------------


def test_help_shows_each_flag_once() -> None:
    done = subprocess.run([sys.executable, "-m", "openfal", "serve", "--help"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    for flag in ("--no-auth", "--no-builtin", "--drain-seconds", "--max-waiting-direct",
                 "--max-connections", "--header-timeout", "--max-header-kb"):
        assert flag in done.stdout
    assert "--no-no-" not in done.stdout


@pytest.mark.parametrize(("args", "expected"), [
    ([], {"drain_seconds": 30, "max_waiting_direct_per_key": 32, "max_connections": 2048,
          "header_timeout_seconds": 10, "max_header_bytes": 64 * 1024, "auth": True,
          "builtin_apps": True}),
    (["--drain-seconds", "2.5", "--max-waiting-direct", "0", "--max-connections", "10",
      "--header-timeout", "1.5", "--max-header-kb", "8", "--no-auth", "--no-builtin"],
     {"drain_seconds": 2.5, "max_waiting_direct_per_key": None, "max_connections": 10,
      "header_timeout_seconds": 1.5, "max_header_bytes": 8 * 1024, "auth": False,
      "builtin_apps": False}),
])
def test_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  args: list[str], expected: dict[str, object]) -> None:
    started: list[Settings] = []
    monkeypatch.setattr(cli_main, "serve_platform",
                        lambda settings, on_ready: started.append(settings))
    done = CliRunner().invoke(cli_main.app, ["serve", "--data-dir", str(tmp_path), *args])
    assert done.exit_code == 0, done.output
    assert {name: getattr(started[0], name) for name in expected} == expected
