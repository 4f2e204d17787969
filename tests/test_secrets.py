"""App secrets: an ADMIN sets, lists and unsets them (CLI and API); they are sealed at rest,
reach runners as environment variables (in process and on remote workers, which open them
with their own key), and no value is ever shown: not by the CLI, the API or the logs."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from openfal.errors import ConfigError
from openfal.secrets import (
    KEY_VARIABLE,
    MAX_VALUE_CHARS,
    SecretBox,
    SecretsUnavailable,
    runner_secrets,
)
from openfal.testing import ServerProcess

SECRET_APPS = Path(__file__).parent / "apps" / "secret_apps.py"
GREETER, SEES_ALL, NEEDS_MISSING = (f"{SECRET_APPS}::{name}"
                                    for name in ("Greeter", "SeesAll", "NeedsMissing"))
# Made-up values, distinctive enough to be searched for in outputs and files.
GREETING = "made-up-greeting-5d1c7e"
OTHER = "made-up-other-value-a93f02"
KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with auth, the secret apps and no built-in ones (no OPENFAL_SECRETS_KEY:
    its key is the data dir's)."""
    args = ["--no-builtin", *(a for ref in (GREETER, SEES_ALL, NEEDS_MISSING)
                              for a in ("--app", ref))]
    with ServerProcess(tmp_path_factory.mktemp("secrets"), args) as server:
        yield server


@pytest.fixture
def admin(secured: ServerProcess) -> Iterator[httpx.Client]:
    with secured.client(headers={"authorization": f"Key {secured.admin_key}"}) as client:
        yield client


def cli(server: ServerProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``openfal secrets ...`` against ``server`` (found, with its admin key, through its
    data dir)."""
    env = {name: value for name, value in os.environ.items() if name != "OPENFAL_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "openfal", "secrets", *args, "--data-dir", str(server.data_dir)],
        input=stdin, capture_output=True, text=True, timeout=60, env=env)


def put(client: httpx.Client, name: str, value: str) -> httpx.Response:
    return client.put(f"/api/secrets/{name}", json={"value": value})


def test_the_cli_sets_lists_and_unsets_secrets_and_never_shows_a_value(
        secured: ServerProcess, admin: httpx.Client) -> None:
    outputs = []
    for name, value in (("CLI_GREETING", GREETING), ("CLI_OTHER", OTHER)):
        done = cli(secured, "set", name, stdin=value + "\n")
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
    listed = cli(secured, "list")
    assert listed.returncode == 0, listed.stderr
    assert "CLI_GREETING" in listed.stdout and "CLI_OTHER" in listed.stdout
    as_json = cli(secured, "list", "--json")
    api = admin.get("/api/secrets")
    assert api.status_code == 200
    by_name = {secret["name"]: secret for secret in api.json()["secrets"]}
    assert set(by_name["CLI_GREETING"]) == {"name", "updated_at"}
    assert by_name["CLI_GREETING"]["updated_at"] <= by_name["CLI_OTHER"]["updated_at"]
    assert json.loads(as_json.stdout) == api.json()

    unset = cli(secured, "unset", "CLI_OTHER")
    assert unset.returncode == 0, unset.stderr
    again = cli(secured, "unset", "CLI_OTHER")
    assert again.returncode == 1
    assert "secret_not_found" in again.stderr
    gone = admin.delete("/api/secrets/CLI_OTHER")
    assert gone.status_code == 404 and gone.json()["error_type"] == "secret_not_found"
    assert "CLI_OTHER" not in admin.get("/api/secrets").text

    shown = "".join([*outputs, listed.stdout, listed.stderr, as_json.stdout, api.text,
                     unset.stdout, again.stderr, *secured.output])
    for value in (GREETING, OTHER):
        assert value not in shown


def test_values_are_sealed_at_rest(secured: ServerProcess, admin: httpx.Client) -> None:
    value = "made-up-value-kept-at-rest-77e1"
    assert put(admin, "AT_REST", value).status_code == 200
    stored = b"".join(path.read_bytes() for path in secured.data_dir.glob("openfal.db*"))
    assert b"app-secret/AT_REST" in stored, "the row is in the files searched"
    assert value.encode() not in stored
    key_file = secured.data_dir / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text())) == 32


def test_runners_get_the_secrets_their_app_names_or_every_one(
        secured: ServerProcess, admin: httpx.Client) -> None:
    for name, value in (("GREETING", GREETING), ("OTHER", OTHER)):
        assert put(admin, name, value).status_code == 200
    greeter = admin.post("/openfal/greeter", json={})
    assert greeter.status_code == 200, greeter.text
    assert greeter.json() == {"greeting": GREETING, "sees_other": False, "sees_key": False}
    sees_all = admin.post("/openfal/sees-all", json={})
    assert sees_all.json() == {"greeting": GREETING, "sees_other": True, "sees_key": False}

    missing = admin.post("/openfal/needs-missing", json={})
    assert missing.status_code == 503
    assert missing.json()["error_type"] == "runner_scheduling_failure"
    assert "not set: NEVER_SET" in missing.json()["detail"]
    logs = "".join(secured.output)
    assert GREETING not in logs and OTHER not in logs


def test_only_admin_keys_may_use_secrets(secured: ServerProcess, admin: httpx.Client) -> None:
    api_key = admin.post("/api/keys", json={"scope": "API"}).json()["key"]
    with secured.client() as anonymous, secured.client(
            headers={"authorization": f"Key {api_key}"}) as api:
        for client, status in ((anonymous, 401), (api, 403)):
            assert client.get("/api/secrets").status_code == status
            assert put(client, "GREETING", "x").status_code == status
            assert client.delete("/api/secrets/GREETING").status_code == status
    assert admin.get("/api/secrets").status_code == 200


@pytest.mark.parametrize("name", ["lower", "1ST", "HAS-DASH", "A" * 129])
def test_a_bad_name_is_refused(admin: httpx.Client, name: str) -> None:
    for response in (put(admin, name, "x"), admin.delete(f"/api/secrets/{name}")):
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["path", "name"]


def test_a_bad_value_is_refused_without_being_echoed(admin: httpx.Client) -> None:
    too_long = "made-up" + "x" * MAX_VALUE_CHARS
    for value in (too_long, "made-up\0nul"):
        refused = put(admin, "BAD_VALUE", value)
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["body", "value"]
        assert "made-up" not in refused.text
    malformed = admin.put("/api/secrets/BAD_VALUE", content=b'{"value": "made-up-cut')
    assert malformed.status_code == 422 and "made-up" not in malformed.text
    assert put(admin, "BAD_VALUE", "é" * MAX_VALUE_CHARS).status_code == 200


def test_remote_workers_open_secrets_with_their_own_key(
        start_server: Callable[..., ServerProcess], start_worker: Callable[..., ServerProcess],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    gateway = start_server("--no-runners", "--no-builtin", "--app", GREETER, "--app", SEES_ALL)
    start_worker(gateway, "with-key", GREETER)
    monkeypatch.delenv(KEY_VARIABLE)
    start_worker(gateway, "without-key", SEES_ALL)
    with gateway.client() as client:
        assert put(client, "GREETING", GREETING).status_code == 200
        greeter = client.post("/openfal/greeter", json={})
        assert greeter.json() == {"greeting": GREETING, "sees_other": False,
                                  "sees_key": False}, greeter.text
        keyless = client.post("/openfal/sees-all", json={})
    assert keyless.status_code == 503
    assert f"{KEY_VARIABLE} is missing or wrong" in keyless.json()["detail"]


def test_a_wrong_key_cannot_open_secrets() -> None:
    sealed = {"GREETING": SecretBox(bytes(32)).seal("GREETING", GREETING, 0.0)}
    with pytest.raises(SecretsUnavailable, match=f"{KEY_VARIABLE} is missing or wrong"):
        runner_secrets(sealed, None, SecretBox(bytes([1] * 32)))
    moved = {"OTHER": sealed["GREETING"]}  # the name is the value's associated data
    with pytest.raises(SecretsUnavailable, match=KEY_VARIABLE):
        runner_secrets(moved, ["OTHER"], SecretBox(bytes(32)))


def test_the_key_variable_takes_base64_of_32_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    key = bytes(range(200, 232))
    sealed = SecretBox(key).seal("A", "made-up", 0.0)
    for encoded in (base64.b64encode(key).decode(),
                    base64.urlsafe_b64encode(key).decode().rstrip("=")):
        monkeypatch.setenv(KEY_VARIABLE, encoded)
        box = SecretBox.from_variable()
        assert box is not None and box.open("A", sealed) == "made-up"
    monkeypatch.setenv(KEY_VARIABLE, base64.b64encode(bytes(16)).decode())
    with pytest.raises(ConfigError, match="must be 32 bytes"):
        SecretBox.from_variable()


def test_a_server_with_a_malformed_key_does_not_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "openfal", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, KEY_VARIABLE: "not a key"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {KEY_VARIABLE} must be 32 bytes in base64; make one with: "
        f"openssl rand -base64 32"]
