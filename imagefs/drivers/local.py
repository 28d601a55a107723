"""The embedded store: images in a local directory, no Glance needed.

Layout under the store's root::

    images/<id>.json   the record (the keys of imagefs.records.FIELDS,
                       plus "properties")
    images/<id>.data   the bytes, written once
    tmp/               uploads in progress
    lock               flock()ed while a record is read-modified-written

Every file appears by ``rename`` of a fully written, fsync'ed temporary file,
so a reader sees an old record or a new one, never half of one.  Data files
never change once the image is active; a reader holding one open keeps its
bytes even if the image is deleted meanwhile.

Semantics follow Glance v2: UUID ids; new images are ``queued`` until their
data is uploaded, then ``active`` with ``size``, ``checksum`` (md5) and
``os_hash_value`` (sha512); default visibility ``shared``; default listing
sorted by ``created_at`` descending; ``os_hidden`` images listed only when
asked for (and then only they); ``tag`` filters for images having all the
tags given; a ``protected`` image cannot be deleted.  Visibility uses the
context: an admin sees everything, others see public and community images
and their own.  The store has no locations and no stores to name;
``virtual_size`` is known for raw images only (it is their size).
Deleting keeps a tombstone record with status ``deleted`` (so
``get(..., show_deleted=True)`` can show it) and removes the data.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from ..atomic import WholeFile, write_whole
from ..context import RequestContext
from ..errors import (ImageBadRequest, ImageConflict, ImageNoData, ImageNotAuthorized,
                      ImageNotFound, ImageProtected)
from ..ids import is_image_id
from ..records import DELETED_STATES, FIELDS, make_record

URI_SCHEME = "imagefs-local"
DISK_FORMATS = {"ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"}
CONTAINER_FORMATS = {"ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"}
VISIBILITIES = {"public", "private", "shared", "community"}
CHUNK = 1 << 20


def default_store_dir() -> Path:
    """``$XDG_DATA_HOME/imagefs/store`` (``~/.local/share/imagefs/store``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "imagefs" / "store"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalDriver:
    name = "local"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().absolute()
        self.images = self.root / "images"
        self.tmp = self.root / "tmp"
        for d in (self.images, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalDriver({str(self.root)!r})"

    # ---- addressing -------------------------------------------------------
    def parse_uri(self, uri: str) -> str | None:
        """``imagefs-local:<id>`` names an image of this store."""
        prefix = URI_SCHEME + ":"
        if uri.startswith(prefix):
            return uri[len(prefix):].lstrip("/")
        return None

    def _paths(self, image_id: str) -> tuple[Path, Path]:
        if not is_image_id(image_id):  # also keeps ids from naming other files
            raise ImageNotFound(f"no image {image_id!r}")
        return self.images / f"{image_id}.json", self.images / f"{image_id}.data"

    @contextlib.contextmanager
    def _locked(self):
        with open(self.root / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- records ------------------------------------------------------------
    def _load(self, image_id: str) -> dict[str, Any]:
        meta, _ = self._paths(image_id)
        try:
            return json.loads(meta.read_bytes())
        except FileNotFoundError:
            raise ImageNotFound(f"no image {image_id}") from None

    def _save(self, raw: Mapping[str, Any]) -> None:
        meta, _ = self._paths(raw["id"])
        write_whole(meta, json.dumps(raw, indent=1, sort_keys=True).encode(), sync=True)

    @staticmethod
    def _visible(ctx: RequestContext, raw: Mapping[str, Any]) -> bool:
        return (ctx.is_admin or raw.get("visibility") in ("public", "community")
                or raw.get("owner") == ctx.project_id)

    @staticmethod
    def _may_change(ctx: RequestContext, raw: Mapping[str, Any]) -> bool:
        return ctx.is_admin or raw.get("owner") == ctx.project_id

    def _load_for(self, ctx: RequestContext, image_id: str, write: bool = False) -> dict[str, Any]:
        raw = self._load(image_id)
        if not self._visible(ctx, raw):
            raise ImageNotFound(f"no image {image_id}")
        if write and not self._may_change(ctx, raw):
            raise ImageNotAuthorized(f"image {image_id} belongs to another project")
        return raw

    def get(self, ctx: RequestContext, image_id: str, include_locations: bool) -> dict:
        raw = self._load_for(ctx, image_id)
        return make_record(raw, include_locations)  # the store exposes no locations

    def list(self, ctx, filters, *, marker, limit, sort_key, sort_dir, page_size) -> Iterator[dict]:
        filters = dict(filters)
        tags = set(filters.pop("tag", ()))
        hidden = filters.pop("os_hidden", "false") == "true"
        records = []
        for path in self.images.glob("*.json"):
            try:
                raw = json.loads(path.read_bytes())
            except (FileNotFoundError, ValueError):
                continue  # deleted meanwhile
            if not self._visible(ctx, raw) or raw["status"] in DELETED_STATES:
                continue  # as Glance: deleted images are never listed
            if "visibility" not in filters and not ctx.is_admin:
                if raw["visibility"] == "community" and raw.get("owner") != ctx.project_id:
                    continue  # as Glance: community images are listed only on request
            if bool(raw.get("os_hidden")) != hidden or not tags <= set(raw.get("tags") or ()):
                continue
            if all(self._matches(raw, k, v) for k, v in filters.items()):
                records.append(raw)
        def key(raw):  # sort_key is one of FIELDS: API.get_all checked it
            value = raw.get(sort_key)
            return (value is not None, value if value is not None else "", raw["id"])

        records.sort(key=key, reverse=(sort_dir == "desc"))
        if marker is not None:
            ids = [r["id"] for r in records]
            if marker not in ids:
                raise ImageBadRequest(f"marker {marker} is not an image in this listing")
            records = records[ids.index(marker) + 1:]
        if limit is not None:
            records = records[:limit]
        for raw in records:
            yield make_record(raw)

    @staticmethod
    def _matches(raw: Mapping[str, Any], key: str, value: Any) -> bool:
        if key in FIELDS:
            have = raw.get(key)
        else:
            have = (raw.get("properties") or {}).get(key)
        if isinstance(have, bool):
            have = str(have).lower()
        return have is not None and str(have) == str(value)

    @staticmethod
    def _check(fields: Mapping[str, Any]) -> None:
        checks = (("disk_format", DISK_FORMATS), ("container_format", CONTAINER_FORMATS),
                  ("visibility", VISIBILITIES))
        for key, allowed in checks:
            if fields.get(key) is not None and fields[key] not in allowed:
                raise ImageBadRequest(f"invalid {key} {fields[key]!r}; one of: "
                                      + ", ".join(sorted(allowed)))
        for key in ("min_disk", "min_ram"):
            if key in fields and (not isinstance(fields[key], int) or fields[key] < 0):
                raise ImageBadRequest(f"{key} must be a whole number >= 0")
        for key in ("protected", "os_hidden"):
            if key in fields and not isinstance(fields[key], bool):
                raise ImageBadRequest(f"{key} must be true or false")

    def create(self, ctx, fields, props) -> dict:
        self._check(fields)
        now = _now()
        raw = {key: None for key in FIELDS}
        raw.update(id=str(uuid.uuid4()), status="queued", min_disk=0, min_ram=0,
                   visibility="shared", protected=False, os_hidden=False, tags=[],
                   owner=ctx.project_id, created_at=now, updated_at=now)
        raw.update(fields)
        raw["tags"] = sorted(set(raw["tags"]))
        if raw["visibility"] == "public" and not ctx.is_admin:
            raise ImageNotAuthorized("only an admin may create public images")
        raw["properties"] = dict(props)
        with self._locked():
            self._save(raw)
        return make_record(raw)

    def upload(self, ctx, image_id: str, chunks: Iterable[bytes]) -> None:
        raw = self._load_for(ctx, image_id, write=True)
        if raw["status"] != "queued":
            raise ImageConflict(f"image {image_id} is {raw['status']}; data can be "
                                "uploaded only to a queued image")
        md5, sha512, size = hashlib.md5(), hashlib.sha512(), 0
        with WholeFile(self._paths(image_id)[1], sync=True, directory=self.tmp) as f:
            for chunk in chunks:
                f.write(chunk)
                md5.update(chunk)
                sha512.update(chunk)
                size += len(chunk)
            f.finish()
            with self._locked():
                raw = self._load_for(ctx, image_id, write=True)
                if raw["status"] != "queued":
                    raise ImageConflict(f"image {image_id} is {raw['status']}")
                f.commit()
                raw.update(status="active", size=size, checksum=md5.hexdigest(),
                           os_hash_algo="sha512", os_hash_value=sha512.hexdigest(),
                           virtual_size=size if raw.get("disk_format") == "raw" else None,
                           updated_at=_now())
                self._save(raw)

    def update(self, ctx, image_id, fields, props, purge_props) -> dict:
        self._check(fields)
        with self._locked():
            raw = self._load_for(ctx, image_id, write=True)
            if raw["status"] in DELETED_STATES:
                raise ImageNotFound(f"image {image_id} is deleted")
            if fields.get("visibility") == "public" and not ctx.is_admin:
                raise ImageNotAuthorized("only an admin may make an image public")
            raw.update(fields)
            raw["tags"] = sorted(set(raw.get("tags") or ()))
            raw["properties"] = ({} if purge_props else dict(raw.get("properties") or {}))
            raw["properties"].update(props)
            raw["updated_at"] = _now()
            self._save(raw)
        return make_record(raw)

    def delete(self, ctx, image_id) -> None:
        with self._locked():
            raw = self._load_for(ctx, image_id, write=True)
            if raw["status"] in DELETED_STATES:
                raise ImageNotFound(f"image {image_id} is already deleted")
            if raw.get("protected"):
                raise ImageProtected(f"image {image_id} is protected and cannot be deleted")
            raw.update(status="deleted", updated_at=_now())
            self._save(raw)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._paths(image_id)[1])

    # ---- data ---------------------------------------------------------------
    def _open_data(self, ctx, image_id):
        raw = self._load_for(ctx, image_id)
        if raw["status"] != "active":
            raise ImageNoData(f"image {image_id} is {raw['status']} and has no data")
        try:
            return open(self._paths(image_id)[1], "rb")
        except FileNotFoundError:
            raise ImageNoData(f"image {image_id} has no data (deleted meanwhile?)") from None

    def open_stream(self, ctx, image_id, offset, end=None, timeout=None) -> Iterator[bytes]:
        f = self._open_data(ctx, image_id)

        def chunks():
            with f:
                f.seek(offset)
                left = None if end is None else max(0, end - offset)
                while left is None or left > 0:
                    chunk = f.read(CHUNK if left is None else min(CHUNK, left))
                    if not chunk:
                        return
                    if left is not None:
                        left -= len(chunk)
                    yield chunk
        return chunks()

    def read(self, ctx, image_id, offset, length, timeout=None) -> bytes:
        with self._open_data(ctx, image_id) as f:
            return os.pread(f.fileno(), length, offset)
