"""``openfal env``: shell exports that point the unchanged fal-client at this server.

fal-client reads its hosts once, at import, from ``FAL_RUN_HOST`` and ``FAL_QUEUE_RUN_HOST``
and always speaks https, so the server must run with ``--tls`` and the client must trust the
local CA (``SSL_CERT_FILE``). ``rest.fal.ai`` and ``v3.fal.media`` (uploads, realtime tokens)
are hard-coded; ``HTTPS_PROXY`` sends them through openfal's CONNECT proxy, while
``NO_PROXY`` keeps the direct traffic to the server off the proxy. The proxy variables are
exported in both cases because urllib-based code (httpx included) prefers the lower-case
ones when both are set, and a user's own ``https_proxy`` must not win over ours.
``FAL_KEY`` comes from :func:`client_key`. ``OPENFAL_SERVER`` and ``OPENFAL_KEY`` point the
``openfal`` commands at the same server with the same key; they trust its certificate
through ``SSL_CERT_FILE``.

Usage: ``eval "$(openfal env)"``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from openfal.auth.credentials import KEY_VARIABLE, find_key
from openfal.net.hosts import reachable_host
from openfal.net.runtime import RuntimeInfo, running_server

PLACEHOLDER_KEY = "openfal-local"


class EnvError(Exception):
    """The running server cannot be used by fal-client; the message says why."""


def client_key(data_dir: Path) -> str:
    """The key fal-client sends as ``Authorization: Key <key>``: ``OPENFAL_KEY`` when set
    (not ``FAL_KEY``, which may be a hosted-platform key), else the admin key the server
    created in the data dir, else a placeholder that only a server without auth accepts."""
    found = find_key(data_dir)
    return found.secret if found is not None else PLACEHOLDER_KEY


def client_environment(info: RuntimeInfo, key: str,
                       server_url: str | None = None) -> dict[str, str]:
    """The variables, for the server ``info`` describes (its URL overridden by ``server_url``)."""
    url = urlsplit(server_url or info.url)
    if url.scheme != "https":
        raise EnvError(f"the openfal server at {url.geturl()} does not serve https; fal-client "
                       "always uses https: restart it with `openfal serve --tls`")
    host = reachable_host(url.hostname or "")
    run_host = _client_host(host, url)
    env = {"FAL_KEY": key, "FAL_RUN_HOST": run_host,
           "FAL_QUEUE_RUN_HOST": f"{run_host}/queue",
           "OPENFAL_SERVER": f"https://{run_host}", KEY_VARIABLE: key}
    if info.bundle_file:
        env["SSL_CERT_FILE"] = info.bundle_file
    if info.proxy_url:
        direct = ",".join(dict.fromkeys(["127.0.0.1", "localhost", host]))
        env |= {"HTTPS_PROXY": info.proxy_url, "https_proxy": info.proxy_url,
                "NO_PROXY": direct, "no_proxy": direct}
    return env


def env_command(data_dir: Path, server_url: str | None) -> int:
    """Print the exports; 1 with a reason on stderr when no usable server is running."""
    info = running_server(data_dir)
    if info is None:
        print(f"no openfal server is running on {data_dir}; start one with "
              f"`openfal serve --tls --data-dir {shlex.quote(str(data_dir))}`", file=sys.stderr)
        return 1
    try:
        env = client_environment(info, client_key(data_dir), server_url)
    except EnvError as exc:
        print(exc, file=sys.stderr)
        return 1
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _client_host(host: str, url: SplitResult) -> str:
    """``host[:port][/prefix]``: fal-client pastes it between ``https://`` and the path."""
    netloc = f"[{host}]" if ":" in host else host
    if url.port is not None:
        netloc += f":{url.port}"
    return netloc + url.path.rstrip("/")
