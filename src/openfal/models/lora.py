"""LoRAs named by a request (``loras: [{path, scale}]``): fetched, checked, cached, applied.

- Fetched like every input file: a data URI, an http(s) URL (through the SSRF-safe fetcher and
  the runner's network policy) or one of this server's upload URLs, bounded by the server's
  download limit. A path that is none of these is a 422 on ``loras[i].path``.
- Checked from the file's own bytes, whatever its name: it must be a safetensors file (an
  8-byte little-endian header length, a JSON header whose tensors exactly cover the rest)
  whose tensor names are LoRA weights (``lora_A``/``lora_B``, ``lora_down``/``lora_up``).
  Anything else is a 422 on the field, and so is a LoRA that matches no layer of the model.
- Cached on disk by content (``<models-dir>/loras/<sha256>.safetensors``), least recently used
  first out once the cache passes its cap: ``OPENFAL_LORA_CACHE_MB`` (default 2048 MiB). A
  file larger than the cap is refused (422).
- Applied per request: each one is loaded as its own adapter into the pipeline's models, set
  to its scale (several at once, summed), and every adapter is unloaded after the call, so the
  base weights are untouched and never reloaded. Adapters are shared state of the pipeline:
  the caller holds the pipeline's lock around :func:`lora_adapters` and the call.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openfal.app.errors import FieldException
from openfal.app.inputs import download_input
from openfal.models.weights import models_dir

LORA_CACHE_ENV = "OPENFAL_LORA_CACHE_MB"
DEFAULT_LORA_CACHE_MB = 2048
LORA_NAME_MARKERS = ("lora_A", "lora_B", "lora_down", "lora_up")
HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024


class NotALora(ValueError):
    """The file is not a safetensors LoRA; the message says why."""


@dataclass(frozen=True)
class LoraFile:
    """A checked LoRA in the cache, and the scale a request wants it at."""

    path: Path
    sha256: str
    scale: float

    @property
    def adapter_name(self) -> str:
        return f"lora_{self.sha256[:16]}"


def safetensors_tensor_names(path: Path) -> list[str]:
    """The tensor names in ``path``'s safetensors header, after checking that the header is
    well formed and that its tensors cover the rest of the file exactly."""
    size = path.stat().st_size
    with path.open("rb") as file:
        length = int.from_bytes(file.read(HEADER_LENGTH_BYTES), "little")
        if size < HEADER_LENGTH_BYTES or not 2 <= length <= min(MAX_HEADER_BYTES,
                                                                  size - HEADER_LENGTH_BYTES):
            raise NotALora("not a safetensors file (no valid header length)")
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise NotALora("not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise NotALora("not a safetensors file (its header is not a JSON object)")
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    ends = [_data_end(name, entry) for name, entry in tensors.items()]
    if not tensors or max(ends) != size - HEADER_LENGTH_BYTES - length:
        raise NotALora("not a safetensors file (its tensors do not cover the file)")
    return list(tensors)


def _data_end(name: str, entry: Any) -> int:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(value, int) for value in offsets)
            or not 0 <= offsets[0] <= offsets[1]
            or not isinstance(entry.get("dtype"), str) or not isinstance(entry.get("shape"), list)):
        raise NotALora(f"not a safetensors file (tensor {name[:80]!r} is malformed)")
    return offsets[1]


def check_lora(path: Path) -> None:
    """NotALora unless ``path`` is a safetensors file of LoRA weights."""
    names = safetensors_tensor_names(path)
    if not any(marker in name for name in names for marker in LORA_NAME_MARKERS):
        raise NotALora("a safetensors file, but not a LoRA (no lora_A/lora_B or "
                       "lora_down/lora_up weights)")


class LoraCache:
    """LoRA files by content hash in ``root``, at most ``cap_bytes`` in all (LRU)."""

    def __init__(self, root: Path, cap_bytes: int):
        self.root = root
        self.cap_bytes = cap_bytes

    @classmethod
    def from_environment(cls) -> LoraCache:
        megabytes = float(os.environ.get(LORA_CACHE_ENV) or DEFAULT_LORA_CACHE_MB)
        return cls(models_dir() / "loras", int(megabytes * 1024 * 1024))

    def fetch(self, url: str, field: list[str | int]) -> tuple[Path, str]:
        """Fetch ``url``, check it is a LoRA, keep it; its path in the cache and sha256."""
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            incoming, _ = download_input(url, field, scratch)
            if incoming.stat().st_size > self.cap_bytes:
                raise FieldException(field, f"the LoRA is larger than the LoRA cache "
                                     f"({self.cap_bytes} bytes, {LORA_CACHE_ENV})",
                                     type="lora_too_large")
            try:
                check_lora(incoming)
            except NotALora as exc:
                raise FieldException(field, str(exc), type="lora_invalid") from None
            return self.add(incoming)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def add(self, incoming: Path) -> tuple[Path, str]:
        """Move ``incoming`` into the cache under its hash (or reuse the copy already there),
        mark it used, and evict what no longer fits."""
        digest = _sha256(incoming)
        cached = self.root / f"{digest}.safetensors"
        if cached.exists():
            incoming.unlink()
        else:
            os.replace(incoming, cached)
        os.utime(cached)
        self.evict(keep=cached)
        return cached, digest

    def evict(self, keep: Path) -> None:
        """Delete the least recently used files (never ``keep``) until the cache fits."""
        files = sorted(self.root.glob("*.safetensors"), key=_last_used)
        total = sum(_size(path) for path in files)
        for path in files:
            if total <= self.cap_bytes:
                return
            if path != keep:
                total -= _size(path)
                path.unlink(missing_ok=True)

    def total_bytes(self) -> int:
        return sum(_size(path) for path in self.root.glob("*.safetensors"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _last_used(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def fetch_loras(loras: Sequence[Any] | None, field: str = "loras",
                cache: LoraCache | None = None) -> list[LoraFile]:
    """Each of a request's ``{path, scale}`` LoRAs fetched, checked and cached."""
    if not loras:
        return []
    cache = cache or LoraCache.from_environment()
    files = []
    for index, lora in enumerate(loras):
        path, digest = cache.fetch(lora.path, [field, index, "path"])
        files.append(LoraFile(path, digest, lora.scale))
    return files


@contextmanager
def lora_adapters(pipeline: Any, files: Sequence[LoraFile], field: str = "loras"
                  ) -> Iterator[None]:
    """``files`` loaded into ``pipeline`` as adapters at their scales for the duration of the
    block, then unloaded. The same file twice is loaded once, its scales summed."""
    if not files:
        yield
        return
    scales: dict[str, float] = {}
    try:
        for index, lora in enumerate(files):
            if lora.adapter_name not in scales:
                _load_adapter(pipeline, lora, [field, index, "path"])
            scales[lora.adapter_name] = scales.get(lora.adapter_name, 0.0) + lora.scale
        pipeline.set_adapters(list(scales), adapter_weights=list(scales.values()))
        yield
    finally:
        pipeline.unload_lora_weights()


def _load_adapter(pipeline: Any, lora: LoraFile, field: list[str | int]) -> None:
    from safetensors.torch import load_file

    try:
        pipeline.load_lora_weights(load_file(lora.path), adapter_name=lora.adapter_name)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise FieldException(field, f"this model cannot load the LoRA: {str(exc)[:300]}",
                             type="lora_incompatible") from None
    loaded = {name for names in pipeline.get_list_adapters().values() for name in names}
    if lora.adapter_name not in loaded:
        raise FieldException(field, "the LoRA matches no layer of this model",
                             type="lora_incompatible")
