"""Files in requests and results: ``File``, ``Image``, ``Video``, ``Audio`` and URL inputs.

Outputs: an app makes a file with ``File.from_bytes`` / ``from_path`` / ``Image.from_pil`` /
``Video.from_frames`` (H.264 MP4 through PyAV) / ``Audio.from_wav``; it is stored and
serialises like the hosted platform's outputs (``{url, content_type, file_name, file_size}``,
plus ``width``/``height`` for images; ``width``/``height``/``fps``/``num_frames``/``duration``
for videos; ``duration``/``sample_rate``/``channels`` for audio). When the request asked for
``sync_mode`` (or ``inline=True``), it is returned as a data URI instead and never stored.

Inputs: fields typed ``File``/``Image``/..., ``FileUrl``/``ImageUrl``, or plain ``*_url``
strings accept http(s) URLs, data URIs and this server's file URLs. Before the endpoint
runs, the runner fetches each one into the request's scratch folder (bounded in size and
time), so the app reads ``.path`` or calls ``.to_pil()`` without download code.
"""

from __future__ import annotations

import io
import math
import mimetypes
import tempfile
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, Field, GetCoreSchemaHandler, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError, core_schema

from openfal.app.context import current_request
from openfal.fetch import PUBLIC_ONLY, FetchError, NetworkPolicy, check_url, data_uri

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from openfal.files.base import FileStorage


@dataclass
class MediaConfig:
    """Where a runner stores outputs and how it fetches inputs."""

    storage: FileStorage | None = None
    public_url: str | None = None
    file_url: Callable[[str, str], str] | None = None  # (file id, file name) -> public URL
    network_policy: NetworkPolicy = PUBLIC_ONLY
    default_ttl_seconds: float | None = 7 * 24 * 3600
    max_download_bytes: int = 512 * 1024 * 1024
    download_timeout: float = 60.0


_config = MediaConfig()


def configure(config: MediaConfig) -> None:
    global _config
    _config = config


def media_config() -> MediaConfig:
    return _config


def _checked_url(value: str) -> str:
    try:
        check_url(value)
    except FetchError as exc:
        raise PydanticCustomError("url_scheme", str(exc)) from None
    return value


def _guess_type(file_name: str | None, fallback: str = "application/octet-stream") -> str:
    if file_name:
        guessed, _ = mimetypes.guess_type(file_name)
        if guessed:
            return guessed
    return fallback


class File(BaseModel):
    url: str = Field(description="The URL where the file can be downloaded from.")
    content_type: str | None = Field(default=None, description="The mime type of the file.")
    file_name: str | None = Field(default=None, description="The name of the file.")
    file_size: int | None = Field(default=None, description="The size of the file in bytes.")
    _path: Path | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _accept_url_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"url": _checked_url(value)}
        return value

    @classmethod
    def from_bytes(cls, data: bytes, content_type: str | None = None,
                   file_name: str | None = None, *, inline: bool | None = None,
                   **fields: Any) -> Self:
        """Store ``data`` (or inline it as a data URI) and describe it."""
        content_type = content_type or _guess_type(file_name)
        ctx = current_request()
        if inline is None:
            inline = bool(ctx and ctx.sync_mode)
        if inline or _config.storage is None or _config.file_url is None:
            url = data_uri(data, content_type)
        else:
            ttl = ctx.lifecycle_seconds if ctx else "default"
            stored = _config.storage.put(
                data, file_name=file_name or "file", content_type=content_type,
                expires_at=_expiry(_config.default_ttl_seconds if ttl == "default" else ttl))
            url = _config.file_url(stored.id, stored.file_name)
        return cls(url=url, content_type=content_type, file_name=file_name,
                   file_size=len(data), **fields)

    @classmethod
    def from_path(cls, path: str | Path, content_type: str | None = None,
                  file_name: str | None = None, *, inline: bool | None = None) -> Self:
        path = Path(path)
        return cls.from_bytes(path.read_bytes(), content_type or _guess_type(path.name),
                              file_name or path.name, inline=inline)

    @property
    def path(self) -> Path:
        """A local copy of the file (inputs are fetched before the endpoint runs)."""
        if self._path is None:
            raise RuntimeError("this file has no local copy; only request inputs do")
        return self._path

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


def _expiry(ttl_seconds: float | None) -> float | None:
    return None if ttl_seconds is None else time.time() + ttl_seconds


class Image(File):
    width: int | None = Field(default=None, description="The width of the image in pixels.")
    height: int | None = Field(default=None, description="The height of the image in pixels.")

    @classmethod
    def from_pil(cls, image: PILImage, format: str = "png", *, file_name: str | None = None,
                 inline: bool | None = None) -> Self:
        fmt = format.lower().replace("jpg", "jpeg")
        buffer = io.BytesIO()
        if fmt == "jpeg":
            image.convert("RGB").save(buffer, format="JPEG", quality=95)
        elif fmt == "png":
            image.save(buffer, format="PNG", compress_level=1)
        else:
            image.save(buffer, format=fmt.upper())
        ext = "jpg" if fmt == "jpeg" else fmt
        return cls.from_bytes(buffer.getvalue(), f"image/{fmt}",
                              file_name or f"image.{ext}", inline=inline,
                              width=image.width, height=image.height)

    def to_pil(self) -> PILImage:
        return _open_image(self.path)


class Video(File):
    width: int | None = Field(default=None, description="The width of the video in pixels.")
    height: int | None = Field(default=None, description="The height of the video in pixels.")
    fps: float | None = Field(default=None, description="The frame rate, in frames per second.")
    num_frames: int | None = Field(default=None, description="The number of frames.")
    duration: float | None = Field(default=None, description="The duration in seconds.")

    @classmethod
    def from_frames(cls, frames: Sequence[Any] | Any, fps: float, *,
                    file_name: str = "video.mp4", inline: bool | None = None) -> Self:
        """Encode ``frames`` (PIL images, or ``H x W x 3`` arrays: uint8, or floats in [0, 1]
        as diffusers' ``output_type="np"`` gives them) as an H.264 MP4 (yuv420p, PyAV) at
        ``fps``, store it and describe it. An odd side is padded by one edge pixel, as 4:2:0
        needs even sides; ``width`` and ``height`` say what was encoded."""
        encoded = encode_mp4(frames, fps)
        return cls.from_bytes(encoded.data, "video/mp4", file_name, inline=inline,
                              width=encoded.width, height=encoded.height, fps=encoded.fps,
                              num_frames=encoded.num_frames,
                              duration=encoded.num_frames / encoded.fps)


@dataclass(frozen=True)
class EncodedVideo:
    data: bytes
    width: int
    height: int
    fps: float
    num_frames: int


H264_CRF = "18"  # visually near lossless; x264's default preset


def encode_mp4(frames: Sequence[Any] | Any, fps: float) -> EncodedVideo:
    """``frames`` as an H.264 MP4 in memory (see :meth:`Video.from_frames`)."""
    import av

    arrays = [rgb24(frame) for frame in frames]
    if not arrays:
        raise ValueError("a video needs at least one frame")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, not {fps!r}")
    height, width = arrays[0].shape[:2]
    if any(array.shape[:2] != (height, width) for array in arrays):
        raise ValueError("every frame of a video must have the same size")
    rate = Fraction(fps).limit_denominator(1001)
    # A file, not memory: moving the index to the front (faststart, so that players start
    # before the download ends) rereads the output.
    with tempfile.TemporaryDirectory(prefix="openfal-video-") as scratch:
        path = Path(scratch) / "video.mp4"
        with av.open(str(path), "w", format="mp4",
                     options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=rate, options={"crf": H264_CRF})
            stream.width, stream.height = width + width % 2, height + height % 2
            stream.pix_fmt = "yuv420p"
            for array in arrays:
                frame = av.VideoFrame.from_ndarray(_even_sides(array), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        data = path.read_bytes()
    return EncodedVideo(data, stream.width, stream.height, float(rate), len(arrays))


def rgb24(frame: Any) -> Any:
    """A frame (see :meth:`Video.from_frames`) as a contiguous ``H x W x 3`` uint8 array."""
    import numpy as np

    if hasattr(frame, "convert"):  # a PIL image
        frame = frame.convert("RGB")
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"a frame must be H x W x 3 (RGB), not {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(array)


def _even_sides(array: Any) -> Any:
    import numpy as np

    height, width = array.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return array
    return np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


class Audio(File):
    duration: float | None = Field(default=None, description="The duration in seconds.")
    sample_rate: int | None = Field(default=None,
                                    description="The sample rate, in samples per second.")
    channels: int | None = Field(default=None, description="The number of channels.")

    @classmethod
    def from_wav(cls, data: bytes, file_name: str = "audio.wav", *,
                 inline: bool | None = None) -> Self:
        """Store a WAV file and describe it, with its duration, sample rate and channels read
        from its header."""
        with wave.open(io.BytesIO(data)) as header:
            rate, frames = header.getframerate(), header.getnframes()
            channels = header.getnchannels()
        return cls.from_bytes(data, "audio/wav", file_name, inline=inline,
                              duration=frames / rate, sample_rate=rate, channels=channels)


class FileUrl(str):
    """A string input naming a file by URL; after fetching, ``.path`` is a local copy."""

    _path: Path | None = None
    content_type: str | None = None

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            lambda value: cls(_checked_url(value)),
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str))

    @property
    def path(self) -> Path:
        if self._path is None:
            raise RuntimeError("this URL has not been fetched")
        return self._path

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


class ImageUrl(FileUrl):
    def to_pil(self) -> PILImage:
        return _open_image(self.path)


def _open_image(path: Path) -> PILImage:
    from PIL import Image as PIL

    image = PIL.open(path)
    image.load()
    return image


class VideoUrl(FileUrl):
    pass


class AudioUrl(FileUrl):
    pass
