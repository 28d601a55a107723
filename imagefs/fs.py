"""The filesystem's logic: the namespace, attributes, and the calls through.

No pyfuse3 here: ``imagefs.fuse_ops`` adapts this class to FUSE, and tests
call it directly.  Errors are ``imagefs.errors`` and ``FsError`` (an errno
for cases that are the filesystem's own, like a missing file name).

The namespace::

    /                       one directory per active image visible to the caller
    /<image id>/            0555
    /<image id>/metadata.json   the image's record, pretty-printed (0444)
    /<image id>/data            the image's bytes, fetched lazily (0444)
    /by-name/<name>         a symlink to ../<image id> (``imagefs.names``)

``ImageFS`` answers for the namespace, attributes, directory handles and the
one change it accepts (``set_times``, ``imagefs.times``), over three parts:

- ``imagefs.inodes``: inode numbers derived from image ids, the same for every
  daemon that serves the mount in turn (``imagefs.holder``), and the record of
  ids reached without being listed;
- ``imagefs.listing``: the listing and records with their TTLs, misses, the
  stale listing served when the service fails, and resolving an inode an
  earlier daemon gave out;
- ``imagefs.handles``: open files, rebuilt on demand when a handle an earlier
  daemon opened is read, and the readahead shared per image.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import stat
import time
from datetime import datetime

import trio

from .api import API
from .blocks import BlockReader
from .config import MountConfig
from .context import RequestContext
from .errors import FsError
from .handles import DIRECT_FH, FileHandles
from .ids import is_image_id
from .image import ImageRef
from .inodes import (BY_NAME_INODE, KIND_DATA, KIND_DIR, KIND_LINK, KIND_META, ROOT_INODE,
                     InodeTable, image_inode)
from .listing import ImageRecords, KnownImage, metadata_bytes
from .profiles import BootProfiles
from .times import DataTimes

# Names the filesystem's users (and its tests) take from here.
__all__ = ["BY_NAME", "BY_NAME_INODE", "DATA", "DIRECT_FH", "METADATA", "ROOT_INODE", "Attr",
           "FsError", "ImageFS", "image_inode", "metadata_bytes"]

METADATA, DATA, BY_NAME = "metadata.json", "data", "by-name"


@dataclasses.dataclass
class Attr:
    ino: int
    mode: int
    size: int
    mtime_ns: int
    nlink: int
    timeout: float  # how long the kernel may trust this
    atime_ns: int | None = None  # None: mtime_ns


def _ns(timestamp: str | None) -> int:
    if not timestamp:
        return 0
    try:
        return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return 0


class ImageFS:
    """The mount's filesystem as one caller (``ctx``) sees it: what ``FuseOps`` calls."""

    def __init__(self, api: API, ctx: RequestContext, config: MountConfig, blocks: BlockReader,
                 times: DataTimes | None = None, profiles: BootProfiles | None = None):
        self.api, self.ctx, self.config, self.blocks = api, ctx, config, blocks
        self.times = times if times is not None else DataTimes()  # utime on data files
        self.profiles = profiles  # when the mount records and replays boot profiles
        self.records = ImageRecords(api, ctx, config, blocks, InodeTable(config.cache_dir))
        self.handles = FileHandles(config, blocks, self.records)
        self._next_fh = 1
        self._dirs: dict[int, tuple[int, list[str]]] = {}  # fh -> (inode, names)
        self.mounted_at_ns = time.time_ns()
        # "seconds": what reads spent waiting for their bytes (a boot's stalls)
        self.reads = {"requests": 0, "bytes": 0, "seconds": 0.0}

    @property
    def image_count(self) -> int:
        return len(self.records)

    @property
    def api_calls(self) -> dict[str, int]:
        """Calls to the image service: listings and records fetched."""
        return self.records.api_calls

    def known_images(self) -> list[KnownImage]:
        """Every image the mount has seen a record of."""
        return self.records.known()

    async def listing(self) -> list[str]:
        """Ids of the active images the caller can see (cached for list_ttl)."""
        return await self.records.listing()

    async def image_ref(self, image_id: str) -> ImageRef:
        """What the data path needs of an active image (ImageNotFound if it is not)."""
        return (await self.records.image(image_id)).ref

    # ---- namespace ------------------------------------------------------------------
    async def lookup(self, parent: int, name: str) -> Attr:
        if parent == BY_NAME_INODE:
            await self.listing()
            image = self.records.named(name)
            if image is None:
                raise FsError(errno.ENOENT)
            return self._attr(image, KIND_LINK)
        if parent == ROOT_INODE:
            if name == BY_NAME:
                return self._by_name_attr()
            if not is_image_id(name):
                raise FsError(errno.ENOENT)
            await self.listing()
            if self.records.listed(name):
                image = self.records.get(name)
            else:  # not listed (yet): ask the service, so new images are reachable at once
                image = await self.records.image(name)
            return self._attr(image, KIND_DIR)
        image, kind = await self.records.resolve(parent)
        if kind != KIND_DIR:
            raise FsError(errno.ENOTDIR)
        if name == METADATA:
            return self._attr(image, KIND_META)
        if name == DATA:
            return self._attr(image, KIND_DATA)
        raise FsError(errno.ENOENT)

    def _by_name_attr(self) -> Attr:
        return Attr(BY_NAME_INODE, stat.S_IFDIR | self.config.dir_mode, 0, self.mounted_at_ns, 2,
                    self.config.list_ttl)

    async def getattr(self, ino: int) -> Attr:
        if ino == BY_NAME_INODE:
            return self._by_name_attr()
        if ino == ROOT_INODE:
            return Attr(ROOT_INODE, stat.S_IFDIR | self.config.dir_mode, 0, self.mounted_at_ns, 2,
                        self.config.list_ttl)
        image, kind = await self.records.resolve(ino)
        if kind not in (KIND_DATA, KIND_LINK):  # these never change; the record may
            image = await self.records.image(image.id)
        return self._attr(image, kind)

    def readlink(self, ino: int) -> str:
        image, kind = self.records.inodes.split(ino)
        if kind != KIND_LINK:
            raise FsError(errno.EINVAL)
        return f"../{image.id}"

    def _attr(self, image: KnownImage, kind: int) -> Attr:
        record = image.record
        if kind == KIND_DIR:
            return Attr(image.ino, stat.S_IFDIR | self.config.dir_mode, 0,
                        _ns(record.get("updated_at")), 2,
                        self.config.record_ttl)
        if kind == KIND_META:
            return Attr(image.ino + 1, stat.S_IFREG | self.config.file_mode,
                        len(metadata_bytes(record)),
                        _ns(record.get("updated_at")), 1, self.config.record_ttl)
        if kind == KIND_LINK:
            return Attr(image.ino + 3, stat.S_IFLNK | 0o777, len(f"../{image.id}"),
                        _ns(record.get("created_at")), 1, self.config.list_ttl)
        # An active image's bytes never change: the kernel may keep its attributes
        # (a utime answers with the new ones, which the kernel takes).
        atime = mtime = _ns(record.get("created_at"))
        if (given := self.times.get(image.id, image.ref.version)) is not None:
            atime, mtime = given
        return Attr(image.ino + 2, stat.S_IFREG | self.config.file_mode, record.get("size") or 0,
                    mtime, 1, 3600.0, atime)

    async def set_times(self, ino: int, atime_ns: int | None, mtime_ns: int | None) -> Attr:
        """``utime`` on a ``data`` file (None: that time stays); the one change the
        mount accepts, for Nova's image cache (``imagefs.times``).  EROFS elsewhere."""
        if ino in (ROOT_INODE, BY_NAME_INODE):
            raise FsError(errno.EROFS)
        image, kind = await self.records.resolve(ino)
        if kind != KIND_DATA:
            raise FsError(errno.EROFS)
        now = self._attr(image, kind)
        await self.times.set(image.id, image.ref.version,
                             now.atime_ns if atime_ns is None else atime_ns,
                             now.mtime_ns if mtime_ns is None else mtime_ns)
        return self._attr(image, kind)

    async def opendir(self, ino: int) -> int:
        if ino == ROOT_INODE:
            snapshot = [BY_NAME] + list(await self.listing())
        elif ino == BY_NAME_INODE:
            await self.listing()
            snapshot = self.records.names()
        else:
            _, kind = await self.records.resolve(ino)
            if kind != KIND_DIR:
                raise FsError(errno.ENOTDIR)
            snapshot = [METADATA, DATA]
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        self._dirs[fh] = (ino, snapshot)
        return fh

    def readdir(self, fh: int, start: int) -> list[tuple[str, Attr, int]]:
        """Entries from offset ``start`` on, each with the offset of the next."""
        if fh not in self._dirs:
            raise FsError(errno.EBADF)
        ino, snapshot = self._dirs[fh]
        out = []
        for i in range(start, len(snapshot)):
            name = snapshot[i]
            if ino == BY_NAME_INODE:
                image = self.records.named(name)
                if image is None:
                    continue
                attr = self._attr(image, KIND_LINK)
            elif ino != ROOT_INODE:
                image, _ = self.records.inodes.split(ino)
                attr = self._attr(image, KIND_META if name == METADATA else KIND_DATA)
            elif name == BY_NAME:
                attr = self._by_name_attr()
            else:
                image = self.records.get(name)
                if image is None:
                    continue
                attr = self._attr(image, KIND_DIR)
            out.append((name, attr, i + 1))
        return out

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # ---- files ------------------------------------------------------------------------
    async def open(self, ino: int, writable: bool, direct: bool = False) -> tuple[int, bool]:
        """A file handle and whether the kernel may keep its cached pages
        (``direct``: opened ``O_DIRECT``, its reads bypass the page cache)."""
        if writable:
            raise FsError(errno.EROFS)
        if ino in (ROOT_INODE, BY_NAME_INODE):
            raise FsError(errno.EISDIR)
        image, kind = await self.records.resolve(ino)
        if kind == KIND_DIR:
            raise FsError(errno.EISDIR)
        if kind == KIND_LINK:
            raise FsError(errno.ELOOP)
        fh, handle = await self.handles.open(ino, image, kind, direct)
        if kind == KIND_DATA and self.profiles is not None:
            self.profiles.opened(handle.image)
        return fh, kind == KIND_DATA

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = await self.handles.get(fh)
        if handle.content is not None:
            return handle.content[offset:offset + size]
        guided = None
        if self.profiles is not None:
            self.profiles.on_read(handle.image, offset, size)
            if self.profiles.guides(handle.image):
                guided = functools.partial(handle.guided, size)
        ahead = handle.prefetcher.on_read(offset, size) if handle.prefetcher is not None \
            else None
        # The failure grace answers the kernel's immediate re-read of a failed page,
        # which only a page-cached file gets: an O_DIRECT reader always tries anew.
        started = trio.current_time()
        data = await self.blocks.read(handle.image, offset, size, paged=handle.paged,
                                      grace=handle.paged, ahead=ahead, guided=guided)
        self.reads["seconds"] += trio.current_time() - started
        self.reads["requests"] += 1
        self.reads["bytes"] += len(data)
        return data

    def release(self, fh: int) -> None:
        """One open of ``fh`` ends (``FileHandles.release``)."""
        self.handles.release(fh)
