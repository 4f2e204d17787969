"""Files in an S3-compatible bucket.

Layout under the prefix (``s3://bucket/prefix``)::

    <id>                   a file; its other StoredFile fields in the object's metadata
    .expiry/<ms>.<id>      an empty marker per file that expires, <ms> its expiry in Unix
                           milliseconds (16 digits): a listing, in key order, finds the
                           expired files and stops at the first marker still in the future
    .multipart/<upload_id> an S3 multipart upload; once completed, copied to <id>

A file exists once its object is written (its metadata carries the md5 of the content, which
S3's own ETag is not for multipart objects). Markers are written before the file, so no file
that expires goes without one; a marker whose file is already gone deletes nothing.

S3 takes at least 5 MiB for every part of a multipart upload but the last (the official
clients send 10 MiB parts): a completion with a smaller one raises InvalidParts. Part etags
are S3's, the md5 of the part (as with any bucket not encrypted by KMS).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.response import StreamingBody

from openfal.errors import ConfigError
from openfal.files.base import (
    ABANDON_AFTER,
    FileTooLarge,
    InvalidParts,
    MultipartUpload,
    NotFound,
    StoredFile,
    check_part_number,
    new_id,
    select_parts,
    valid_id,
)
from openfal.files.disk import CHUNK_BYTES, hash_file, sweep_stale

MIN_PART_BYTES = 5 * 1024 * 1024
_EXPIRY = ".expiry/"
_MULTIPART = ".multipart/"  # not ".uploads": SeaweedFS hides folders of that name
_MARKER = re.compile(r"(\d{16})\.(.+)")  # milliseconds, file id
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MISSING = {"404", "NoSuchKey", "NoSuchUpload", "NoSuchBucket", "NotFound"}
_DELETE_BATCH = 1000  # the most keys one DeleteObjects takes
# One CopyObject up to 5 GiB (S3's limit for it), a multipart copy beyond.
_COPY = TransferConfig(multipart_threshold=5 * 1024**3, multipart_chunksize=1024**3)
# botocore says at INFO where it found the credentials and the endpoint, for every client:
# noise in a server's log, and lines on stderr before a configuration error's one line.
for _name in ("botocore.credentials", "botocore.configprovider"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` as (bucket, prefix without slashes at either end)."""
    split = urlsplit(url)
    prefix = split.path.strip("/")
    if (split.scheme != "s3" or not _BUCKET.fullmatch(split.netloc) or split.query
            or split.fragment or (prefix and "" in prefix.split("/"))):
        raise ConfigError(f"not an S3 URL: {url!r} (expected s3://bucket or "
                          "s3://bucket/prefix)")
    return split.netloc, prefix


class S3FileStorage:
    """A ``FileStorage`` in a bucket, under a key prefix. ``staging_dir``: a local folder
    for callers to stage files on. ``abandon_after``: seconds after which an unfinished
    multipart upload or a staged file is swept."""

    def __init__(self, client: BaseClient, bucket: str, prefix: str = "", *,
                 staging_dir: Path, abandon_after: float = ABANDON_AFTER):
        self.client = client
        self.bucket = bucket
        self._prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.staging_dir = staging_dir
        self.abandon_after = abandon_after
        staging_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_url(cls, url: str, *, staging_dir: Path,
                 abandon_after: float = ABANDON_AFTER) -> S3FileStorage:
        """The store at ``s3://bucket[/prefix]``, reached as the standard AWS variables say
        (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION or
        AWS_DEFAULT_REGION). The bucket must exist: a ConfigError otherwise."""
        bucket, prefix = parse_url(url)
        client = _client_from_environment()
        _check_bucket(client, bucket)
        return cls(client, bucket, prefix, staging_dir=staging_dir,
                   abandon_after=abandon_after)

    # Files
    def put(self, data: bytes, *, file_name: str, content_type: str,
            expires_at: float | None = None) -> StoredFile:
        stored = _new_record(new_id(), file_name, content_type, len(data),
                             hashlib.md5(data, usedforsecurity=False).hexdigest(), expires_at)
        self._mark_expiry(stored)
        self.client.put_object(Bucket=self.bucket, Key=self._key(stored.id), Body=data,
                               ContentType=content_type, Metadata=_metadata(stored))
        return stored

    def put_path(self, path: Path, *, file_name: str, content_type: str,
                 expires_at: float | None = None, move: bool = False) -> StoredFile:
        path = Path(path)
        size, etag = hash_file(path)
        stored = _new_record(new_id(), file_name, content_type, size, etag, expires_at)
        self._mark_expiry(stored)
        self.client.upload_file(str(path), self.bucket, self._key(stored.id), ExtraArgs={
            "ContentType": content_type, "Metadata": _metadata(stored)})
        if move:
            path.unlink()
        return stored

    def stat(self, file_id: str) -> StoredFile | None:
        if not valid_id(file_id):
            return None
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(file_id))
        except ClientError as exc:
            _raise_unless_missing(exc)
            return None
        stored = _record(file_id, head, head["ContentLength"])
        return None if stored is None or stored.expired(time.time()) else stored

    def read(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """One ranged GET; its response carries the metadata that says the file is live."""
        if not valid_id(file_id):
            raise NotFound(f"no file {file_id!r}")
        if end is not None and end <= start:
            return self._nothing_from(file_id)
        request = {"Bucket": self.bucket, "Key": self._key(file_id)}
        if start > 0 or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            response = self.client.get_object(**request)
        except ClientError as exc:
            if _code(exc) == "InvalidRange":  # starts at or past the end
                return self._nothing_from(file_id)
            _raise_unless_missing(exc)
            raise NotFound(f"no file {file_id!r}") from None
        body: StreamingBody = response["Body"]
        stored = _record(file_id, response, _total_size(response))
        if stored is None or stored.expired(time.time()):
            body.close()
            raise NotFound(f"no file {file_id!r}")
        return _chunks(body)

    def delete(self, file_id: str) -> bool:
        if not valid_id(file_id):
            return False
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(file_id))
        except ClientError as exc:
            _raise_unless_missing(exc)
            return False
        stored = _record(file_id, head, head["ContentLength"])
        keys = [self._key(file_id)]  # first: the file is gone once its object is
        if stored is not None and stored.expires_at is not None:
            keys.append(self._marker_key(file_id, stored.expires_at))
        self._delete_keys(keys)
        return True

    # Multipart uploads
    def create_multipart(self, *, file_name: str, content_type: str,
                         expires_at: float | None = None) -> MultipartUpload:
        upload = MultipartUpload(upload_id=new_id(), file_id=new_id())
        metadata = {"file-id": upload.file_id, "file-name": quote(file_name, safe="")}
        if expires_at is not None:
            metadata["expires-at"] = repr(float(expires_at))
        self.client.create_multipart_upload(
            Bucket=self.bucket, Key=self._upload_key(upload.upload_id),
            ContentType=content_type, Metadata=metadata)
        return upload

    def put_part(self, upload_id: str, part_number: int, data: bytes) -> str:
        key, s3_upload_id = self._open_upload(upload_id)
        check_part_number(part_number)
        return self._upload_part(key, s3_upload_id, part_number, data)

    def put_part_path(self, upload_id: str, part_number: int, path: Path,
                      move: bool = False) -> str:
        key, s3_upload_id = self._open_upload(upload_id)
        check_part_number(part_number)
        path = Path(path)
        with path.open("rb") as handle:
            etag = self._upload_part(key, s3_upload_id, part_number, handle)
        if move:
            path.unlink()
        return etag

    def complete_multipart(self, upload_id: str, parts: list[tuple[int, str]], *,
                           max_size: int | None = None) -> StoredFile:
        key, s3_upload_id = self._open_upload(upload_id)
        uploaded = self._uploaded_parts(key, s3_upload_id)
        chosen = select_parts(parts, {number: {etag} for number, (etag, _) in uploaded.items()})
        sizes = [uploaded[number][1] for number, _ in chosen]
        if max_size is not None and sum(sizes) > max_size:
            raise FileTooLarge(f"the parts add up to {sum(sizes)} bytes, over the limit of "
                               f"{max_size} bytes")
        for (number, _), size in zip(chosen[:-1], sizes[:-1], strict=True):
            if size < MIN_PART_BYTES:
                raise InvalidParts(f"part {number} has {size} bytes: S3 takes at least "
                                   f"{MIN_PART_BYTES} bytes (5 MiB) for every part but the last")
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=s3_upload_id,
                MultipartUpload={"Parts": [{"PartNumber": number, "ETag": f'"{etag}"'}
                                           for number, etag in chosen]})
        except ClientError as exc:
            _raise_unless_missing(exc)
            raise NotFound(f"no upload {upload_id!r}") from None
        etag = chosen[0][1] if len(chosen) == 1 else self._md5_of(key)
        return self._publish(key, etag)

    # Expiry
    def collect_expired(self, now: float) -> int:
        expired = list(self._expired_markers(now))
        self._delete_keys([key for file_id, marker in expired
                           for key in (self._key(file_id), marker)])
        before = now - self.abandon_after
        self._abort_abandoned_uploads(before)
        sweep_stale(self.staging_dir, before)
        return len(expired)

    def stored_bytes(self) -> int:
        """The files are the objects directly under the prefix (markers and uploads are in
        folders of it)."""
        total = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._prefix, Delimiter="/"):
            total += sum(item["Size"] for item in page.get("Contents", [])
                         if valid_id(item["Key"].removeprefix(self._prefix)))
        return total

    def _expired_markers(self, now: float) -> Iterator[tuple[str, str]]:
        """(file id, marker key) of the markers expired at ``now``, in one listing that
        stops at the first marker still in the future."""
        folder = self._key(_EXPIRY)
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder):
            for item in page.get("Contents", []):
                match = _MARKER.fullmatch(item["Key"].removeprefix(folder))
                if match is None or not valid_id(match[2]):
                    continue
                if int(match[1]) > now * 1000:
                    return
                yield match[2], item["Key"]

    def _abort_abandoned_uploads(self, before: float) -> None:
        """Abort multipart uploads started before ``before``, and remove completed ones a
        crash left uncopied."""
        folder = self._key(_MULTIPART)
        for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=folder):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < before:
                    self._abort(upload["Key"], upload["UploadId"])
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder):
            self._delete_keys([item["Key"] for item in page.get("Contents", [])
                               if item["LastModified"].timestamp() < before])

    # Keys and writes
    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _upload_key(self, upload_id: str) -> str:
        return self._key(f"{_MULTIPART}{upload_id}")

    def _marker_key(self, file_id: str, expires_at: float) -> str:
        milliseconds = min(max(math.ceil(expires_at * 1000), 0), 10**16 - 1)
        return self._key(f"{_EXPIRY}{milliseconds:016d}.{file_id}")

    def _mark_expiry(self, stored: StoredFile) -> None:
        if stored.expires_at is not None:
            self.client.put_object(Bucket=self.bucket, Body=b"",
                                   Key=self._marker_key(stored.id, stored.expires_at))

    def _delete_keys(self, keys: list[str]) -> None:
        for first in range(0, len(keys), _DELETE_BATCH):
            batch = keys[first:first + _DELETE_BATCH]
            response = self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": key} for key in batch], "Quiet": True})
            if response.get("Errors"):
                error = response["Errors"][0]
                raise OSError(f"S3 did not delete {error['Key']!r}: {error.get('Message')}")

    def _open_upload(self, upload_id: str) -> tuple[str, str]:
        """The key and S3 upload id of one of our uploads still open; NotFound if none."""
        if valid_id(upload_id):
            key = self._upload_key(upload_id)
            listed = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            for upload in listed.get("Uploads", []):
                if upload["Key"] == key:
                    return key, upload["UploadId"]
        raise NotFound(f"no upload {upload_id!r}")

    def _upload_part(self, key: str, s3_upload_id: str, part_number: int,
                     body: bytes | BinaryIO) -> str:
        try:
            response = self.client.upload_part(Bucket=self.bucket, Key=key, Body=body,
                                               UploadId=s3_upload_id, PartNumber=part_number)
        except ClientError as exc:  # completed or aborted meanwhile
            _raise_unless_missing(exc)
            raise NotFound(f"no upload at {key!r}") from None
        return str(response["ETag"]).strip('"').lower()

    def _uploaded_parts(self, key: str, s3_upload_id: str) -> dict[int, tuple[str, int]]:
        """Each uploaded part's number: its etag and size."""
        parts: dict[int, tuple[str, int]] = {}
        try:
            for page in self.client.get_paginator("list_parts").paginate(
                    Bucket=self.bucket, Key=key, UploadId=s3_upload_id):
                for part in page.get("Parts", []):
                    parts[part["PartNumber"]] = (part["ETag"].strip('"').lower(), part["Size"])
        except ClientError as exc:
            _raise_unless_missing(exc)
            raise NotFound(f"no upload at {key!r}") from None
        return parts

    def _abort(self, key: str, s3_upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                               UploadId=s3_upload_id)
        except ClientError as exc:
            _raise_unless_missing(exc)

    def _md5_of(self, key: str) -> str:
        digest = hashlib.md5(usedforsecurity=False)
        for chunk in _chunks(self.client.get_object(Bucket=self.bucket, Key=key)["Body"]):
            digest.update(chunk)
        return digest.hexdigest()

    def _publish(self, upload_key: str, etag: str) -> StoredFile:
        """Copy a completed upload to its file's key, with the file's metadata."""
        head = self.client.head_object(Bucket=self.bucket, Key=upload_key)
        info = head["Metadata"]
        expires = info.get("expires-at")
        stored = _new_record(info["file-id"], unquote(info["file-name"]),
                             head.get("ContentType", "application/octet-stream"),
                             head["ContentLength"], etag,
                             None if expires is None else float(expires))
        self._mark_expiry(stored)
        self.client.copy({"Bucket": self.bucket, "Key": upload_key}, self.bucket,
                         self._key(stored.id), Config=_COPY, ExtraArgs={
                             "ContentType": stored.content_type, "Metadata": _metadata(stored),
                             "MetadataDirective": "REPLACE"})
        self.client.delete_object(Bucket=self.bucket, Key=upload_key)
        return stored

    def _nothing_from(self, file_id: str) -> Iterator[bytes]:
        """An empty read of a file that must still exist."""
        if self.stat(file_id) is None:
            raise NotFound(f"no file {file_id!r}")
        return iter(())


def _client_from_environment() -> BaseClient:
    """An S3 client as the standard AWS variables say; path-style addressing when
    AWS_ENDPOINT_URL names an S3-compatible server (they seldom serve bucket subdomains)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    style = "path" if os.environ.get("AWS_ENDPOINT_URL") else "auto"
    config = Config(s3={"addressing_style": style}, max_pool_connections=32)
    return boto3.session.Session().client("s3", region_name=region, config=config)


def _check_bucket(client: BaseClient, bucket: str) -> None:
    where = f"S3 bucket {bucket!r} at {client.meta.endpoint_url}"
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if _code(exc) in _MISSING:
            raise ConfigError(f"{where} does not exist: create it first") from None
        raise ConfigError(f"{where}: {exc}") from None
    except BotoCoreError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _new_record(file_id: str, file_name: str, content_type: str, size: int, etag: str,
                expires_at: float | None) -> StoredFile:
    return StoredFile(id=file_id, file_name=file_name, content_type=content_type, size=size,
                      etag=etag, created_at=time.time(),
                      expires_at=None if expires_at is None else float(expires_at))


def _metadata(stored: StoredFile) -> dict[str, str]:
    """The object metadata that holds a file's record (ASCII, as HTTP headers need)."""
    metadata = {"file-name": quote(stored.file_name, safe=""), "md5": stored.etag,
                "created-at": repr(stored.created_at)}
    if stored.expires_at is not None:
        metadata["expires-at"] = repr(stored.expires_at)
    return metadata


def _record(file_id: str, response: dict[str, Any], size: int) -> StoredFile | None:
    """The StoredFile in a HEAD or GET response; None for an object this class did not
    finish writing."""
    metadata = response.get("Metadata", {})
    try:
        expires = metadata.get("expires-at")
        return StoredFile(
            id=file_id, file_name=unquote(metadata["file-name"]),
            content_type=response.get("ContentType", "application/octet-stream"), size=size,
            etag=metadata["md5"], created_at=float(metadata["created-at"]),
            expires_at=None if expires is None else float(expires))
    except (KeyError, ValueError):
        return None


def _total_size(response: dict[str, Any]) -> int:
    """The whole object's size from a GET response, ranged (Content-Range) or not."""
    content_range = response.get("ContentRange")
    if content_range:
        return int(content_range.rsplit("/", 1)[1])
    return int(response["ContentLength"])


def _chunks(body: StreamingBody) -> Iterator[bytes]:
    with closing(body):
        yield from body.iter_chunks(CHUNK_BYTES)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _raise_unless_missing(exc: ClientError) -> None:
    if _code(exc) not in _MISSING:
        raise exc
