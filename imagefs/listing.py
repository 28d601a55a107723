"""The images the mount shows: the listing and each image's record, with their TTLs.

Listings and records are cached for ``list_ttl``/``record_ttl`` seconds.  A
name that is not in the cached listing is looked up in the image service
directly (``ImageRecords.image``), so a new image is reachable at once, and a
name not found there is not asked for again for ``list_ttl`` (a miss).  When
the service fails, a stale listing is served (and logged) rather than an
error; with no listing yet, the failure is the caller's.  Every clock is
``trio.current_time()``, so tests run TTLs under trio's ``MockClock``.

Each image the mount has seen is found by its inodes too (``imagefs.inodes``):
``resolve`` finds the image of an inode that an earlier daemon of the mount
gave the kernel.  An image that leaves the listing, or is found gone, has its
per-image state in the data path dropped (``BlockReader.forget``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
from typing import Any

import trio

from .api import API
from .blocks import BlockReader
from .config import MountConfig
from .context import RequestContext
from .errors import FsError, ImageNotFound
from .image import ImageRef
from .inodes import FIRST_IMAGE_INODE, InodeTable, image_inode
from .names import by_name
from .records import without_locations

# The filesystem's log: a stale listing is said under the name operators know.
log = logging.getLogger("imagefs.fs")


def metadata_bytes(record: dict[str, Any]) -> bytes:
    """``metadata.json``: the record without its locations, whatever the API
    gave (every user of the host may read the file; a location may hold a
    store's credentials)."""
    return (json.dumps(without_locations(record), indent=2, sort_keys=True) + "\n").encode()


@dataclasses.dataclass
class KnownImage:
    id: str
    ino: int                    # the directory's; metadata is ino+1, data ino+2
    record: dict[str, Any]
    fetched: float              # trio.current_time() of the record

    @property
    def ref(self) -> ImageRef:
        return ImageRef.of(self.record)


class ImageRecords:
    """The listing, the records and the misses of one mount, as one caller sees them."""

    def __init__(self, api: API, ctx: RequestContext, config: MountConfig, blocks: BlockReader,
                 inodes: InodeTable):
        self.api, self.ctx, self.config, self.blocks, self.inodes = api, ctx, config, blocks, \
            inodes
        self.meta_limiter = trio.CapacityLimiter(4)  # listings never wait behind data fetches
        self.api_calls = {"list": 0, "get": 0}
        self._images: dict[str, KnownImage] = {}
        self._listing: list[str] | None = None   # sorted, for readdir
        self._listed: set[str] = set()            # the same, for lookups
        self._names: dict[str, str] = {}          # by-name: file name -> image id
        self._listed_at = 0.0
        self._listing_lock = trio.Lock()
        self._missing: dict[str, float] = {}     # id -> when it was not found

    def __len__(self) -> int:
        return len(self._images)

    def known(self) -> list[KnownImage]:
        """Every image the mount has seen a record of."""
        return list(self._images.values())

    def get(self, image_id: str) -> KnownImage | None:
        """The image as last seen, whatever the age of its record (None: never seen)."""
        return self._images.get(image_id)

    def listed(self, image_id: str) -> bool:
        """Whether the image is in the listing as last fetched."""
        return image_id in self._listed

    def names(self) -> list[str]:
        """The by-name file names of the listing as last fetched, sorted."""
        return sorted(self._names)

    def named(self, name: str) -> KnownImage | None:
        """The image a by-name file name stands for in the listing as last fetched."""
        return self._images.get(self._names.get(name, ""))

    def remember(self, record: dict[str, Any]) -> KnownImage:
        """Take ``record`` as the image's latest (fetched now)."""
        image = self._images.get(record["id"])
        if image is None:
            image = KnownImage(record["id"], image_inode(record["id"]), record,
                               trio.current_time())
            self.inodes.add(image)
            self._images[image.id] = image
        else:
            image.record, image.fetched = record, trio.current_time()
        return image

    async def _call(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.meta_limiter,
                                             abandon_on_cancel=True)

    async def listing(self) -> list[str]:
        """Ids of the active images the caller can see (cached for list_ttl)."""
        async with self._listing_lock:
            if self._listing is not None and \
                    trio.current_time() - self._listed_at < self.config.list_ttl:
                return self._listing
            self.api_calls["list"] += 1
            try:
                records = await self._call(lambda: list(self.api.get_all(self.ctx)))
            except Exception as exc:
                if self._listing is None:
                    raise
                log.warning("cannot refresh the image listing (%s); serving the one from "
                            "%.0fs ago", exc, trio.current_time() - self._listed_at)
                return self._listing
            listed = self._listed
            self._listing = sorted(self.remember(r).id for r in records)
            self._listed = set(self._listing)
            for image_id in listed - self._listed:  # gone, or no longer visible
                self.blocks.forget(image_id)
            self._names = by_name(records)
            self._listed_at = trio.current_time()
            return self._listing

    async def image(self, image_id: str) -> KnownImage:
        """The image, its record no older than record_ttl; ImageNotFound if gone."""
        image = self._images.get(image_id)
        if image is not None and trio.current_time() - image.fetched < self.config.record_ttl:
            return image
        missing = self._missing.get(image_id)
        if missing is not None and trio.current_time() - missing < self.config.list_ttl:
            raise ImageNotFound(f"image {image_id} not found (looked up "
                                f"{trio.current_time() - missing:.0f}s ago)")
        self.api_calls["get"] += 1
        try:
            record = await self._call(self.api.get, self.ctx, image_id, False, False)
            if record["status"] != "active":
                raise ImageNotFound(f"image {image_id} is {record['status']}")
        except ImageNotFound:
            self.blocks.forget(image_id)
            if image_id in self._listed:
                self._listed.discard(image_id)
                self._listing.remove(image_id)
            if len(self._missing) > 4096:
                self._missing.clear()
            self._missing[image_id] = trio.current_time()
            raise
        self._missing.pop(image_id, None)
        known = image_id in self._images
        image = self.remember(record)
        if not known and image_id not in self._listed:
            self.inodes.note_unlisted(image_id)
        return image

    async def resolve(self, ino: int) -> tuple[KnownImage, int]:
        """``InodeTable.split``, for an inode an earlier daemon gave the kernel too:
        looked for in the listing, then among the recorded ids; ENOENT if neither
        has it."""
        try:
            return self.inodes.split(ino)
        except FsError:
            pass
        if ino < FIRST_IMAGE_INODE:
            raise FsError(errno.ENOENT, f"no inode {ino}")
        await self.listing()
        if not self.inodes.knows(ino):
            image_id = self.inodes.recorded(ino)
            if image_id is not None:
                with contextlib.suppress(ImageNotFound):
                    await self.image(image_id)
        return self.inodes.split(ino)
