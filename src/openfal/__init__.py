"""openfal: a self-hosted generative-media inference platform that speaks the fal API."""

from openfal.app.app import App, endpoint, realtime
from openfal.app.batching import Batch, BatchContext
from openfal.app.context import RequestContext, current_request, partial, progress
from openfal.app.errors import AppException, FieldException, RequestCancelled
from openfal.app.media import (
    Audio,
    AudioUrl,
    File,
    FileUrl,
    Image,
    ImageUrl,
    Video,
    VideoUrl,
)

__version__ = "0.1.0"

__all__ = [
    "App",
    "AppException",
    "Audio",
    "AudioUrl",
    "Batch",
    "BatchContext",
    "FieldException",
    "File",
    "FileUrl",
    "Image",
    "ImageUrl",
    "RequestCancelled",
    "RequestContext",
    "Video",
    "VideoUrl",
    "__version__",
    "current_request",
    "endpoint",
    "partial",
    "progress",
    "realtime",
]
