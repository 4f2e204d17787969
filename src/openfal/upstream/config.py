"""The ``[[upstream]]`` entries of ``openfal serve --config openfal.toml``.

```toml
[[upstream]]
name = "hosted"
url = "https://queue.fal.run"      # any server speaking the queue API, another openfal too
key_env = "FAL_KEY"                # the upstream's key is read from this variable
endpoints = ["fal-ai/kling-video/*", "fal-ai/luma-dream-machine/*"]
rehost = true                      # copy output files into openfal's storage
file_hosts = ["*.fal.media"]       # other hosts its output files live on (patterns)
give_up_after = 60                 # seconds it may be unreachable while working on a request
```

An entry may name its run, queue and storage hosts separately (``run_url``, ``queue_url``,
``storage_url``); where it gives one ``url`` they are that host, the queue under the
``/queue`` prefix where openfal serves it (``{url}/queue``). For the hosted platform
(``url`` on ``fal.run``, ``queue.fal.run`` or ``fal.ai``) they are ``https://fal.run``,
``https://queue.fal.run`` and ``https://rest.fal.ai``, and its output files are on
``fal.media`` hosts unless ``file_hosts`` says otherwise.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from openfal.errors import ConfigError

UPSTREAMS_ENV = "OPENFAL_UPSTREAMS"  # how a runner is told the configuration (JSON)
HOSTED = {"run_url": "https://fal.run", "queue_url": "https://queue.fal.run",
          "storage_url": "https://rest.fal.ai"}
_HOSTED_NAMES = ("fal.run", "queue.fal.run", "fal.ai", "rest.fal.ai")
HOSTED_FILE_HOSTS = ("fal.media", "*.fal.media")
_SECONDS = ("poll_interval", "timeout", "give_up_after")  # keys read as float seconds
_KNOWN_KEYS = {"name", "url", "run_url", "queue_url", "storage_url", "key_env", "endpoints",
               "rehost", "file_hosts", "poll_interval", "timeout", "give_up_after"}


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    run_url: str
    queue_url: str
    storage_url: str
    endpoints: tuple[str, ...]
    key_env: str | None = None
    rehost: bool = True
    # Hosts output files may be fetched from when re-hosting (besides the upstream's own):
    # names or shell-style patterns ("*.fal.media").
    file_hosts: tuple[str, ...] = ()
    poll_interval: float = 0.5  # seconds between status polls when a stream is not kept
    timeout: float = 30.0  # one HTTP call to the upstream
    # How long the upstream may stay unreachable while it works on an accepted request
    # before that request ends with an error.
    give_up_after: float = 60.0

    def serves(self, endpoint_id: str) -> bool:
        return any(_matches(pattern, endpoint_id) for pattern in self.endpoints)

    @property
    def key(self) -> str | None:
        return os.environ.get(self.key_env) if self.key_env else None

    def holds_file(self, url: str) -> bool:
        """Whether ``url`` is one of the upstream's files: on the origin of one of its own
        URLs, or on a host its ``file_hosts`` name."""
        try:
            scheme, host, port = _origin(url)
        except ValueError:
            return False
        if scheme not in ("http", "https") or not host:
            return False
        if (scheme, host, port) in {_origin(own) for own in
                                    (self.run_url, self.queue_url, self.storage_url)}:
            return True
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.file_hosts)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    """Scheme, host and port; ValueError for a port urllib cannot read."""
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


@dataclass
class UpstreamSet:
    """Every configured upstream, in the order the config lists them."""

    entries: list[UpstreamConfig] = field(default_factory=list)

    def for_endpoint(self, endpoint_id: str) -> UpstreamConfig | None:
        """The first upstream whose patterns match the endpoint, if any."""
        return next((u for u in self.entries if u.serves(endpoint_id)), None)

    def check_keys(self) -> None:
        """A :class:`ConfigError` for an upstream whose ``key_env`` is not set: runners
        inherit the server's environment, so the key would be missing for good."""
        for upstream in self.entries:
            if upstream.key_env and not upstream.key:
                raise ConfigError(f"upstream {upstream.name}: its key is read from "
                                  f"${upstream.key_env}, which is not set")

    def to_environment(self) -> dict[str, str]:
        return {UPSTREAMS_ENV: json.dumps([asdict(u) for u in self.entries])}

    @classmethod
    def from_environment(cls) -> UpstreamSet:
        raw = json.loads(os.environ.get(UPSTREAMS_ENV) or "[]")
        return cls([UpstreamConfig(**{**entry, "endpoints": tuple(entry["endpoints"]),
                                      "file_hosts": tuple(entry["file_hosts"])})
                    for entry in raw])


def _matches(pattern: str, endpoint_id: str) -> bool:
    """``owner/app/*`` matches the app's root endpoint and every sub-path; other patterns
    are shell-style (``fnmatch``) or exact."""
    if pattern.endswith("/*") and endpoint_id == pattern[:-2]:
        return True
    return fnmatch.fnmatchcase(endpoint_id, pattern)


def load_config(path: Path) -> UpstreamSet:
    """Read the ``[[upstream]]`` entries of a TOML file; a mistake is a :class:`ConfigError`
    naming the file and the entry."""
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config {path} is not valid TOML: {exc}") from None
    entries = document.get("upstream", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: 'upstream' must be a list of tables ([[upstream]])")
    upstreams = [_entry(path, i, entry) for i, entry in enumerate(entries)]
    names = [u.name for u in upstreams]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: two [[upstream]] entries share a name")
    return UpstreamSet(upstreams)


def _entry(path: Path, index: int, entry: Any) -> UpstreamConfig:
    where = f"{path}: [[upstream]] #{index + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} is not a table")
    unknown = set(entry) - _KNOWN_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    endpoints = entry.get("endpoints")
    if not (isinstance(endpoints, list) and endpoints
            and all(isinstance(e, str) and e for e in endpoints)):
        raise ConfigError(f"{where}: 'endpoints' must be a non-empty list of id patterns")
    urls = _urls(where, entry)
    hosted = urls["queue_url"] == HOSTED["queue_url"]
    try:
        # Keys the entry leaves out keep UpstreamConfig's defaults.
        given: dict[str, Any] = {key: float(entry[key]) for key in _SECONDS if key in entry}
        if "rehost" in entry:
            given["rehost"] = bool(entry["rehost"])
        return UpstreamConfig(
            name=str(entry.get("name") or f"upstream-{index + 1}"), endpoints=tuple(endpoints),
            key_env=entry.get("key_env"),
            file_hosts=tuple(entry.get("file_hosts", HOSTED_FILE_HOSTS if hosted else ())),
            **given, **urls)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _urls(where: str, entry: dict[str, Any]) -> dict[str, str]:
    for name in ("url", *HOSTED):
        if not isinstance(entry.get(name, ""), str):
            raise ConfigError(f"{where}: '{name}' must be a URL in quotes")
    url = entry.get("url")
    if url is not None and (urlsplit(url).hostname or "") in _HOSTED_NAMES:
        base = dict(HOSTED)
    else:
        # One host serving everything (another openfal): its queue API is under /queue.
        base = ({"run_url": url, "queue_url": url.rstrip("/") + "/queue", "storage_url": url}
                if url else {})
    urls = {name: (entry.get(name) or base.get(name) or "").rstrip("/") for name in HOSTED}
    for name, value in urls.items():
        if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname:
            raise ConfigError(f"{where}: needs 'url' or '{name}' as an http(s) URL")
    return urls

