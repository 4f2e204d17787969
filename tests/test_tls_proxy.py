"""``openfal serve --tls``, the CONNECT proxy for the fal host names, and ``openfal env``.

Nothing here reaches a real external host: fal host names are only ever used through the
proxy, which keeps them on this machine, and pass-through goes to servers started here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from openfal.net.tls import ensure_tls

from conftest import APPS, ServerProcess

# Variables from the environment running the tests that would change where requests go.
CLIENT_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                    "all_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR",
                    "FAL_KEY", "FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "OPENFAL_KEY")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}


def server_json(server: ServerProcess) -> dict:
    return json.loads((server.data_dir / "server.json").read_text())


def trusting(cafile: str | Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


def openfal_env(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openfal", "env", *args],
                          env={**clean_env(), **env}, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One ``--tls`` server (proxy on a free port) with the media test app, for the module."""
    with ServerProcess(tmp_path_factory.mktemp("data"),
                        ["--tls", "--app", f"{APPS}::Media"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def runtime(tls_server: ServerProcess) -> dict:
    return server_json(tls_server)


@pytest.fixture(scope="module")
def exports(tls_server: ServerProcess) -> dict[str, str]:
    """What ``openfal env`` prints for the server, as a dict."""
    result = openfal_env("--data-dir", str(tls_server.data_dir))
    assert result.returncode == 0, result.stderr
    assert all(line.startswith("export ") for line in result.stdout.splitlines())
    return dict(line.removeprefix("export ").split("=", 1)
                for line in result.stdout.splitlines())


@pytest.fixture(scope="module")
def auth(exports: dict[str, str]) -> dict[str, str]:
    """The header fal-client sends, with the key ``openfal env`` hands out."""
    return {"Authorization": f"Key {exports['FAL_KEY']}"}


@pytest.fixture
def via_proxy(runtime: dict, auth: dict[str, str]) -> Iterator[httpx.Client]:
    """A client that sends every https request through the proxy and trusts the bundle."""
    with httpx.Client(proxy=runtime["proxy_url"], verify=trusting(runtime["bundle_file"]),
                      headers=auth, trust_env=False, timeout=30) as client:
        yield client


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A plain TCP echo server on 127.0.0.1, standing in for any other host."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def proxy_request(proxy_url: str, head: bytes) -> tuple[socket.socket, bytes]:
    """Send a request head to the proxy; return the socket and the response head."""
    url = urlsplit(proxy_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(head)
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        if not chunk:
            break
        response += chunk
    return sock, response


def receive_all(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- certificates -------------------------------------------------------------------------


def test_tls_files_are_created_once_and_reused_across_restarts(start_server,
                                                               tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_server("--tls", "--no-builtin", data_dir=data_dir)
    tls = data_dir / "tls"
    ca, cert = (tls / "ca.pem").read_bytes(), (tls / "server.pem").read_bytes()
    assert (tls / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tls / "server.key").stat().st_mode & 0o777 == 0o600
    info = server_json(first)
    assert first.url.startswith("https://127.0.0.1:")
    assert info["url"] == first.url and info["scheme"] == "https"
    assert info["port"] == first.port and info["pid"] == first.proc.pid
    assert info["proxy_url"].startswith("http://127.0.0.1:")
    assert info["ca_file"] == str(tls / "ca.pem")
    assert info["bundle_file"] == str(tls / "bundle.pem")
    proxy_port = int(info["proxy_url"].rsplit(":", 1)[1])
    first.stop()
    assert not (data_dir / "server.json").exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy_port), timeout=5).close()

    second = start_server("--tls", "--no-builtin", "--no-proxy", data_dir=data_dir)
    assert (tls / "ca.pem").read_bytes() == ca
    assert (tls / "server.pem").read_bytes() == cert
    assert server_json(second)["proxy_url"] is None


def test_server_certificate_is_reissued_for_new_names_and_near_expiry(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path)
    ca, pem = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    ensure_tls(tmp_path)
    assert files.server_cert.read_bytes() == pem
    cert = x509.load_pem_x509_certificate(pem)

    ensure_tls(tmp_path, ["gpu-box.lan", "10.1.2.3"])
    renamed = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    names = renamed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gpu-box.lan" in names.get_values_for_type(x509.DNSName)
    assert "10.1.2.3" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert renamed.serial_number != cert.serial_number

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=350)
    ensure_tls(tmp_path, ["gpu-box.lan", "10.1.2.3"], now=later)
    renewed = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert renewed.not_valid_after_utc > renamed.not_valid_after_utc
    assert files.ca_cert.read_bytes() == ca
    renewed.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))


def test_certificates_carry_what_strict_verifiers_require(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "fal.run", "queue.fal.run", "rest.fal.ai", "rest.alpha.fal.ai",
            "v3.fal.media", "v3b.fal.media", "fal.media"} <= set(
                names.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "::1"} <= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days in range(360, 370)
    bundle = files.bundle.read_bytes()
    assert bundle.startswith(Path(certifi.where()).read_bytes())
    assert bundle.endswith(files.ca_cert.read_bytes())


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "fal.run", "rest.fal.ai"])
def test_served_certificate_verifies_against_the_ca(tls_server: ServerProcess, runtime: dict,
                                                     name: str) -> None:
    context = trusting(runtime["ca_file"])
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_served_certificate_does_not_cover_other_names(tls_server: ServerProcess,
                                                       runtime: dict) -> None:
    context = trusting(runtime["ca_file"])
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(raw, server_hostname="example.com")


def test_https_with_the_bundle(tls_server: ServerProcess, runtime: dict) -> None:
    with httpx.Client(verify=trusting(runtime["bundle_file"]), trust_env=False) as client:
        response = client.get(f"{tls_server.url}/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_runners_fetch_the_servers_own_https_file_urls(tls_server: ServerProcess,
                                                       runtime: dict,
                                                       auth: dict[str, str]) -> None:
    data = b"fetched over https by the runner\n" * 50
    with httpx.Client(base_url=tls_server.url, verify=trusting(runtime["bundle_file"]),
                      headers=auth, trust_env=False, timeout=60) as client:
        initiate = client.post("/storage/upload/initiate",
                               json={"content_type": "text/plain", "file_name": "doc.txt"})
        assert initiate.status_code == 200, initiate.text
        urls = initiate.json()
        assert urls["file_url"].startswith("https://")
        assert client.put(urls["upload_url"], content=data).status_code == 200
        response = client.post("/openfal/media", json={"document": urls["file_url"]})
    assert response.status_code == 200, response.text
    assert response.json()["document"]["sha256"] == hashlib.sha256(data).hexdigest()


# --- the proxy ----------------------------------------------------------------------------


def test_proxy_sends_fal_hosts_to_openfal(via_proxy: httpx.Client) -> None:
    for host in ("rest.fal.ai", "v3.fal.media", "fal.run"):
        response = via_proxy.get(f"https://{host}/health")
        assert response.status_code == 200, (host, response.text)
        assert response.json()["status"] == "ok"
    run = via_proxy.post("https://fal.run/openfal/echo", json={"prompt": "direct"})
    assert run.json() == {"text": "direct"}


def test_proxy_sends_the_queue_host_to_openfal(via_proxy: httpx.Client) -> None:
    from test_run_and_queue import wait_done

    handle = via_proxy.post("https://queue.fal.run/openfal/echo", json={"prompt": "queued"})
    assert handle.status_code == 200, handle.text
    wait_done(via_proxy, handle.json())
    assert via_proxy.get(handle.json()["response_url"]).json() == {"text": "queued"}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_proxy_passes_other_hosts_through_untouched(runtime: dict, echo_port: int,
                                                    host: str) -> None:
    sock, head = proxy_request(
        runtime["proxy_url"], f"CONNECT {host}:{echo_port} HTTP/1.1\r\n"
        f"Host: {host}:{echo_port}\r\n\r\n".encode())
    with sock:
        assert head.startswith(b"HTTP/1.1 200 ")
        payload = bytes(range(256)) * 1024 + b"GET / HTTP/1.1\r\n\r\n"
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the echo side sees EOF and closes: so must we
        assert receive_all(sock) == payload


def test_proxy_passes_tls_to_other_hosts_through(tls_server: ServerProcess,
                                                 via_proxy: httpx.Client) -> None:
    """Not a fal host: the tunnel reaches the destination as named, TLS end to end."""
    response = via_proxy.get(f"https://localhost:{tls_server.port}/health")
    assert response.status_code == 200


def test_open_tunnels_do_not_hold_up_shutdown(start_server, echo_port: int) -> None:
    server = start_server("--tls", "--no-builtin")
    proxy_url = server_json(server)["proxy_url"]
    tunnels = [proxy_request(proxy_url, f"CONNECT {host} HTTP/1.1\r\n\r\n".encode())[0]
               for host in (f"127.0.0.1:{echo_port}", "fal.run:443")]
    os.killpg(server.pid, signal.SIGTERM)
    assert server.wait_exit(15) == 0  # after one signal: open tunnels hold nothing up
    for tunnel in tunnels:
        with tunnel:
            assert receive_all(tunnel) == b""
    assert not (server.data_dir / "server.json").exists()


def test_proxy_refuses_what_it_does_not_serve(runtime: dict) -> None:
    refusals = {
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n": b"405",
        b"CONNECT no-port HTTP/1.1\r\n\r\n": b"400",
        f"CONNECT 127.0.0.1:{free_port()} HTTP/1.1\r\n\r\n".encode(): b"502",
    }
    for request, status in refusals.items():
        sock, head = proxy_request(runtime["proxy_url"], request)
        with sock:
            assert head.split(b" ")[1] == status, (request, head)
            assert receive_all(sock) == b""
        assert (b"\r\nAllow: CONNECT\r\n" in head) == (status == b"405")


# --- openfal env --------------------------------------------------------------------------


def test_env_prints_quoted_exports_from_server_json(tls_server: ServerProcess, runtime: dict,
                                                    exports: dict[str, str]) -> None:
    assert exports["FAL_KEY"]
    assert exports["FAL_RUN_HOST"] == f"127.0.0.1:{tls_server.port}"
    assert exports["FAL_QUEUE_RUN_HOST"] == f"127.0.0.1:{tls_server.port}/queue"
    assert exports["SSL_CERT_FILE"] == runtime["bundle_file"]
    assert exports["HTTPS_PROXY"] == exports["https_proxy"] == runtime["proxy_url"]
    assert exports["NO_PROXY"] == "127.0.0.1,localhost"

    other = openfal_env("--data-dir", str(tls_server.data_dir),
                        "--server", "https://0.0.0.0:9443/prefix/", OPENFAL_KEY="my key")
    assert "export FAL_QUEUE_RUN_HOST=127.0.0.1:9443/prefix/queue\n" in other.stdout
    assert "export FAL_KEY='my key'\n" in other.stdout


ENV_CHECK = """
import json, os, httpx
direct = httpx.get(f"https://{os.environ['FAL_RUN_HOST']}/health")
proxied = httpx.get("https://rest.fal.ai/health")
submitted = httpx.post(f"https://{os.environ['FAL_QUEUE_RUN_HOST']}/openfal/echo",
                       json={"prompt": "env"},
                       headers={"Authorization": f"Key {os.environ['FAL_KEY']}"})
print(json.dumps([direct.json(), proxied.json(), submitted.status_code]))
"""


def test_env_output_points_a_shell_at_the_server(tls_server: ServerProcess) -> None:
    script = (f'eval "$({sys.executable} -m openfal env --data-dir '
              f'{tls_server.data_dir})" && exec {sys.executable} -c "$CHECK"')
    result = subprocess.run(["bash", "-c", script], env={**clean_env(), "CHECK": ENV_CHECK},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    direct, proxied, submitted = json.loads(result.stdout)
    assert direct["status"] == proxied["status"] == "ok"
    assert submitted == 200


def test_env_fails_without_a_tls_server(start_server, tmp_path: Path) -> None:
    missing = openfal_env("--data-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "no openfal server is running" in missing.stderr
    assert missing.stdout == ""

    plain = start_server("--no-builtin")
    assert server_json(plain)["scheme"] == "http"
    result = openfal_env("--data-dir", str(plain.data_dir))
    assert result.returncode == 1 and "--tls" in result.stderr and result.stdout == ""


def test_serve_refuses_proxy_options_without_tls(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "openfal", "serve", "--data-dir", str(tmp_path),
         "--proxy-port", "0"], capture_output=True, text=True, timeout=60, env=clean_env())
    assert result.returncode == 2 and "need --tls" in result.stderr
