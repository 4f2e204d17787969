"""Fetching a validated input's files before the endpoint sees it.

Every ``File`` value, every ``FileUrl`` and every plain string in a field named ``*_url``
(or each item of a ``*_urls`` list) is fetched into the request's scratch folder. Problems
become 422 errors located at the field, as if validation had failed there.
"""

from __future__ import annotations

import functools
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from openfal.app.errors import FieldException
from openfal.app.media import File, FileUrl, Image, ImageUrl, media_config
from openfal.fetch import FetchError, fetch_to_file

Loc = list[str | int]


def fetch_inputs(model: BaseModel, scratch: Path) -> None:
    _walk_model(model, [], scratch)


@functools.cache
def may_hold_files(model: type[BaseModel]) -> bool:
    """Whether inputs of ``model`` can carry anything :func:`fetch_inputs` fetches; worked
    out once per model, so requests without files skip the scratch folder altogether."""
    return any(name.endswith(("_url", "_urls")) or _type_holds_files(field.annotation)
               for name, field in model.model_fields.items())


def _type_holds_files(annotation: Any) -> bool:
    if isinstance(annotation, type):
        if issubclass(annotation, File | FileUrl):
            return True
        if issubclass(annotation, BaseModel):
            return may_hold_files(annotation)
    return any(_type_holds_files(arg) for arg in typing.get_args(annotation))


def _walk_model(model: BaseModel, loc: Loc, scratch: Path) -> None:
    for name in type(model).model_fields:
        value = getattr(model, name)
        replaced = _resolve(value, name, [*loc, name], scratch)
        if replaced is not value:
            model.__dict__[name] = replaced


def _resolve(value: Any, name: str, loc: Loc, scratch: Path) -> Any:
    if isinstance(value, File):
        _fetch_file(value, loc, scratch)
    elif isinstance(value, FileUrl) or (isinstance(value, str) and name.endswith("_url")):
        return _fetch_url(value, name, loc, scratch)
    elif isinstance(value, BaseModel):
        _walk_model(value, loc, scratch)
    elif isinstance(value, list):
        item_name = name[:-1] if name.endswith("_urls") else name
        return [_resolve(item, item_name, [*loc, i], scratch) for i, item in enumerate(value)]
    return value


def download_input(url: str, loc: Loc, scratch: Path) -> tuple[Path, str | None]:
    dest = scratch / f"input-{len(list(scratch.iterdir()))}"
    try:
        content_type = fetch_file(url, dest)
    except FetchError as exc:
        raise FieldException(loc, f"could not fetch the file: {exc}",
                             type="file_download_error") from None
    return dest, content_type


def fetch_file(url: str, dest: Path, max_bytes: int | None = None) -> str | None:
    """Write the file ``url`` names (this server's own file, a data URI or a URL the
    runner's network policy permits) to ``dest``; its content type, if known."""
    config = media_config()
    limit = config.max_download_bytes if max_bytes is None else min(
        max_bytes, config.max_download_bytes)
    return _copy_stored(url, dest) or fetch_to_file(
        url, dest, policy=config.network_policy, max_bytes=limit,
        timeout=config.download_timeout)


def _copy_stored(url: str, dest: Path) -> str | None:
    """Copy a file of this server's own store without a network round trip; returns its
    content type, or None when ``url`` is not one of this server's file URLs."""
    config = media_config()
    prefix = f"{config.public_url}/files/"
    if config.storage is None or config.public_url is None or not url.startswith(prefix):
        return None
    file_id = url[len(prefix):].split("/", 1)[0]
    stored = config.storage.stat(file_id)
    if stored is None:
        raise FetchError("no such file in this server's storage (expired?)")
    with dest.open("wb") as out:
        for chunk in config.storage.read(file_id):
            out.write(chunk)
    return stored.content_type


def _fetch_file(value: File, loc: Loc, scratch: Path) -> None:
    path, content_type = download_input(value.url, loc, scratch)
    value._path = path
    value.content_type = value.content_type or content_type
    value.file_size = path.stat().st_size
    if isinstance(value, Image):
        value.width, value.height = _image_size(path, loc)


def _fetch_url(value: str, name: str, loc: Loc, scratch: Path) -> FileUrl:
    cls = type(value) if isinstance(value, FileUrl) else (
        ImageUrl if "image" in name else FileUrl)
    resolved = cls(value)
    resolved._path, resolved.content_type = download_input(value, loc, scratch)
    if isinstance(resolved, ImageUrl):
        _image_size(resolved._path, loc)
    return resolved


def _image_size(path: Path, loc: Loc) -> tuple[int, int]:
    from PIL import Image as PIL
    from PIL import UnidentifiedImageError

    try:
        with PIL.open(path) as image:
            image.verify()
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise FieldException(loc, f"the file is not an image that can be opened: {exc}",
                             type="image_load_error") from None
