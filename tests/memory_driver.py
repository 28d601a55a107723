"""An image service in memory: a ``Driver`` for fast, exact tests of the layers
above the drivers (the API, downloads, the chooser), with explicit times and
injected faults.

- ``now``: what ``created_at``/``updated_at`` are set to (a test sets it to get
  distinct, ordered times without sleeping);
- ``ranges = False``: a data request that starts past 0 or stops early raises
  ``RangesRefused`` at once, as Glance on rbd does;
- ``fail``: the next N data requests raise ``BackendUnavailable``;
- ``fail_listings``: the next N listings raise ``BackendUnavailable``;
- ``drop_after`` with ``drops``: the next N bodies raise ``BackendUnavailable``
  after that many bytes (a connection reset);
- ``locations``: per image id, the ``locations`` its record shows when asked.

It counts ``gets``, ``lists`` and ``data_requests`` (each with its ``(offset, end)``).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Iterable, Iterator

from imagefs.errors import BackendUnavailable, ImageNoData, ImageNotFound, RangesRefused
from imagefs.records import make_record

CHUNK = 64 << 10


class MemoryDriver:
    name = "memory"

    def __init__(self):
        self.raw: dict[str, dict[str, Any]] = {}
        self.data: dict[str, bytes] = {}
        self.locations: dict[str, list[dict]] = {}
        self.now = "2026-01-01T00:00:00Z"
        self.ranges = True
        self.fail = 0
        self.fail_listings = 0
        self.drop_after: int | None = None
        self.drops = 0
        self.gets = 0
        self.lists = 0
        self.data_requests: list[tuple[int, int | None]] = []

    def parse_uri(self, uri: str) -> str | None:
        return uri[len("memory:"):] if uri.startswith("memory:") else None

    def _raw(self, image_id: str) -> dict[str, Any]:
        raw = self.raw.get(image_id)
        if raw is None or raw["status"] == "deleted":
            raise ImageNotFound(f"no image {image_id}")
        return raw

    def get(self, ctx, image_id, include_locations=False) -> dict:
        self.gets += 1
        return make_record(self._raw(image_id), include_locations,
                           self.locations.get(image_id, ()))

    def list(self, ctx, filters, *, marker, limit, sort_key, sort_dir, page_size):
        self.lists += 1
        if self.fail_listings > 0:
            self.fail_listings -= 1
            raise BackendUnavailable("injected 503 to a listing")
        records = [raw for raw in self.raw.values() if raw["status"] != "deleted" and
                   all(str(raw.get(k)) == v for k, v in filters.items() if k != "tag")]
        records.sort(key=lambda raw: (raw.get(sort_key) or "", raw["id"]),
                     reverse=(sort_dir == "desc"))
        if marker is not None:
            records = records[[r["id"] for r in records].index(marker) + 1:]
        for raw in records[:limit]:
            yield make_record(raw)

    def create(self, ctx, fields, props) -> dict:
        image_id = str(uuid.uuid4())
        self.raw[image_id] = {**fields, "id": image_id, "status": "queued", "properties":
                              dict(props), "created_at": self.now, "updated_at": self.now,
                              "tags": sorted(fields.get("tags") or ())}
        return make_record(self.raw[image_id])

    def upload(self, ctx, image_id, chunks: Iterable[bytes]) -> None:
        data = b"".join(chunks)
        self.data[image_id] = data
        self._raw(image_id).update(status="active", size=len(data),
                                   checksum=hashlib.md5(data).hexdigest(), os_hash_algo="sha512",
                                   os_hash_value=hashlib.sha512(data).hexdigest())

    def add(self, data: bytes, **fields) -> dict:
        """An active image holding ``data``, made at ``now``."""
        record = self.create(None, fields, {})
        self.upload(None, record["id"], [data])
        return self.get(None, record["id"])

    def update(self, ctx, image_id, fields, props, purge_props) -> dict:
        raw = self._raw(image_id)
        raw.update(fields, updated_at=self.now)
        raw["tags"] = sorted(set(raw.get("tags") or ()))
        raw["properties"] = {} if purge_props else dict(raw["properties"])
        raw["properties"].update(props)
        return make_record(raw)

    def delete(self, ctx, image_id) -> None:
        self._raw(image_id)["status"] = "deleted"

    def open_stream(self, ctx, image_id, offset, end=None, timeout=None) -> Iterator[bytes]:
        raw = self._raw(image_id)
        if raw["status"] != "active":
            raise ImageNoData(f"image {image_id} has no data")
        self.data_requests.append((offset, end))
        if self.fail > 0:
            self.fail -= 1
            raise BackendUnavailable("injected 503")
        if (offset > 0 or end is not None) and not self.ranges:
            raise RangesRefused("injected: the store refuses Range requests")
        drop = None
        if self.drop_after is not None and self.drops > 0:
            self.drops -= 1
            drop = self.drop_after
        return self._body(self.data[image_id], offset, end, drop)

    @staticmethod
    def _body(data: bytes, offset: int, end: int | None, drop: int | None) -> Iterator[bytes]:
        stop = len(data) if end is None else min(end, len(data))
        sent = 0
        while offset < stop:
            n = min(CHUNK, stop - offset)
            if drop is not None and sent + n > drop:
                if drop > sent:
                    yield data[offset:offset + drop - sent]
                raise BackendUnavailable("injected connection reset")
            yield data[offset:offset + n]
            offset += n
            sent += n

    def read(self, ctx, image_id, offset, length, timeout=None) -> bytes:
        return b"".join(self.open_stream(ctx, image_id, offset, offset + length, timeout))
