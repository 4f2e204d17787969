"""What a runner process is told about the platform, through its environment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from openfal.app.media import MediaConfig
from openfal.fetch import NetworkPolicy
from openfal.files.base import file_url
from openfal.models.weights import MODELS_DIR_ENV

FILES = "OPENFAL_FILES"  # where outputs go: a local folder or s3://bucket[/prefix]
PUBLIC_URL = "OPENFAL_PUBLIC_URL"
FILE_TTL_SECONDS = "OPENFAL_FILE_TTL_SECONDS"  # "never" for files that do not expire
MAX_DOWNLOAD_BYTES = "OPENFAL_MAX_DOWNLOAD_BYTES"
ALLOW_NETWORKS = "OPENFAL_ALLOW_NETWORKS"  # comma-separated CIDRs the fetcher may reach


def runner_environment(*, files: str, public_url: str, file_ttl_seconds: float | None,
                       models_dir: Path, max_download_bytes: int,
                       allow_networks: list[str]) -> dict[str, str]:
    return {
        FILES: files,
        PUBLIC_URL: public_url,
        FILE_TTL_SECONDS: "never" if file_ttl_seconds is None else str(file_ttl_seconds),
        MODELS_DIR_ENV: str(models_dir),
        MAX_DOWNLOAD_BYTES: str(max_download_bytes),
        ALLOW_NETWORKS: ",".join(allow_networks),
    }


def media_config_from_environment() -> MediaConfig:
    """Where this runner stores outputs (the server's own file store, local or S3); outputs
    are inlined when it was not told."""
    files = os.environ.get(FILES)
    public_url = os.environ.get(PUBLIC_URL)
    if not files or not public_url:
        return MediaConfig()
    from openfal.files import open_file_storage

    ttl = os.environ.get(FILE_TTL_SECONDS, "never")
    defaults = MediaConfig()
    return MediaConfig(
        # A runner stages nothing, but an S3 store wants a staging folder all the same.
        storage=open_file_storage(files, Path(tempfile.gettempdir()) / "openfal-runner"),
        public_url=public_url,
        network_policy=NetworkPolicy.allowing(os.environ.get(ALLOW_NETWORKS, "").split(",")),
        file_url=lambda file_id, name: file_url(public_url, file_id, name),
        default_ttl_seconds=None if ttl == "never" else float(ttl),
        max_download_bytes=int(os.environ.get(MAX_DOWNLOAD_BYTES,
                                              defaults.max_download_bytes)))
