"""Files crossing between openfal and an upstream, both ways.

- **Inputs**: a URL of this server's own file store (what a client uploaded to openfal)
  means nothing to the upstream when this server is not public. Each one is copied into
  the upstream's storage through its storage API and the input points there instead. Data
  URIs and any other URL pass through: the upstream fetches them itself.
- **Outputs** (``rehost``): each URL of the upstream's files in the result (on its own
  hosts or its ``file_hosts``) is fetched through openfal's SSRF-safe fetcher, allowed to
  reach exactly the addresses that host resolves to, and stored in openfal's file store
  with the request's lifecycle, so the result outlives the upstream's URLs. A file object
  keeps its other fields (``content_type``, ``file_name``, ``width``, ``height``).
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from openfal.app.errors import FieldException
from openfal.app.media import File, MediaConfig, media_config
from openfal.fetch import FetchError, NetworkPolicy, fetch_to_file
from openfal.files.base import FileStorage, NotFound
from openfal.upstream.client import UpstreamClient
from openfal.upstream.config import UpstreamConfig

Loc = list[str | int]


# Inputs
async def share_inputs(client: UpstreamClient, payload: Any) -> Any:
    """``payload`` with each URL of this server's file store replaced by the URL of a copy
    in the upstream's storage (one upload per distinct URL). A stored file that is gone is a
    422 at its field."""
    config = media_config()
    if config.storage is None or not config.public_url:
        return payload
    prefix = f"{config.public_url}/files/"
    shared: dict[str, str] = {}

    async def share(url: str, loc: Loc) -> str:
        if url not in shared:
            file_id = url[len(prefix):].split("/", 1)[0]
            shared[url] = await _upload_stored(client, config, file_id, loc)
        return shared[url]

    return await _map_strings(payload, [], lambda url: url.startswith(prefix), share)


async def _upload_stored(client: UpstreamClient, config: MediaConfig, file_id: str,
                         loc: Loc) -> str:
    storage = config.storage
    assert storage is not None
    stored = await asyncio.to_thread(storage.stat, file_id)
    if stored is None:
        raise FieldException(loc, "no such file in this server's storage (expired?)",
                             type="file_download_error")
    return await client.upload(_chunks(storage, file_id, loc), stored.size,
                               stored.content_type, stored.file_name)


async def _chunks(storage: FileStorage, file_id: str, loc: Loc) -> AsyncIterator[bytes]:
    """The stored file's bytes, read off the event loop."""
    try:
        chunks = iter(await asyncio.to_thread(storage.read, file_id))
    except NotFound:
        raise FieldException(loc, "the file left this server's storage (expired?)",
                             type="file_download_error") from None
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


async def _map_strings(value: Any, loc: Loc, matches: Callable[[str], bool],
                       replace: Callable[[str, Loc], Awaitable[str]]) -> Any:
    if isinstance(value, str):
        return await replace(value, loc) if matches(value) else value
    if isinstance(value, list):
        return [await _map_strings(item, [*loc, i], matches, replace)
                for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: await _map_strings(item, [*loc, key], matches, replace)
                for key, item in value.items()}
    return value


# Outputs
class RehostFailed(Exception):
    """An output file of the upstream could not be copied into openfal's storage."""


async def rehost_outputs(upstream: UpstreamConfig, result: Any) -> Any:
    """``result`` with each of the upstream's file URLs replaced by a copy's URL here."""
    return await _Rehoster(upstream).walk(result)


class _Rehoster:
    def __init__(self, upstream: UpstreamConfig):
        self.upstream = upstream
        self.copies: dict[str, File] = {}

    async def walk(self, value: Any) -> Any:
        if isinstance(value, list):
            return [await self.walk(item) for item in value]
        if isinstance(value, dict):
            return await self.walk_object(value)
        if isinstance(value, str) and self.upstream.holds_file(value):
            return (await self.copy(value)).url
        return value

    async def walk_object(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A file object (``{url, content_type, file_name, ...}``) keeps its fields."""
        url = obj.get("url")
        if isinstance(url, str) and self.upstream.holds_file(url):
            copy = await self.copy(url, obj.get("content_type"), obj.get("file_name"))
            obj = {**obj, "url": copy.url}
            if "file_size" in obj:
                obj["file_size"] = copy.file_size
        return {key: item if key == "url" else await self.walk(item)
                for key, item in obj.items()}

    async def copy(self, url: str, content_type: Any = None, file_name: Any = None) -> File:
        if url not in self.copies:
            self.copies[url] = await self._fetch_and_store(
                url, content_type if isinstance(content_type, str) else None,
                file_name if isinstance(file_name, str) else None)
        return self.copies[url]

    async def _fetch_and_store(self, url: str, content_type: str | None,
                               file_name: str | None) -> File:
        config = media_config()
        with tempfile.TemporaryDirectory(prefix="openfal-rehost-") as scratch:
            dest = Path(scratch) / "file"
            try:
                policy = await asyncio.to_thread(_policy_for, url)
                fetched_type = await asyncio.to_thread(
                    fetch_to_file, url, dest, policy=policy,
                    max_bytes=config.max_download_bytes, timeout=config.download_timeout)
            except FetchError as exc:
                raise RehostFailed(f"could not copy {url} from upstream "
                                   f"{self.upstream.name}: {exc}") from None
            data = await asyncio.to_thread(dest.read_bytes)
        return await asyncio.to_thread(
            File.from_bytes, data, content_type or fetched_type, file_name or _name_of(url),
            inline=False)


def _policy_for(url: str) -> NetworkPolicy:
    """Allow exactly the addresses the URL's host resolves to now (the upstream may be on
    loopback or a private network, which the fetcher refuses otherwise)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {host}: {exc}") from None
    return NetworkPolicy.allowing(sorted({str(info[4][0]).split("%")[0] for info in infos}))


def _name_of(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "file"
