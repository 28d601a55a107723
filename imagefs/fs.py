"""The filesystem's logic: namespace, inodes, attributes and reads.

No pyfuse3 here: ``imagefs.fuse_ops`` adapts this class to FUSE, and tests
call it directly.  Errors are ``imagefs.errors`` and ``FsError`` (an errno
for cases that are the filesystem's own, like a missing file name).

The namespace::

    /                       one directory per active image visible to the caller
    /<image id>/            0555
    /<image id>/metadata.json   the image's record, pretty-printed (0444)
    /<image id>/data            the image's bytes, fetched lazily (0444)
    /by-name/<name>         a symlink to ../<image id> (``imagefs.names``)

Inode numbers are derived from the image id (``image_inode``), so that they
mean the same to every daemon that serves the mount in turn (``imagefs.holder``)
and the kernel's lookup counts need no bookkeeping here (``forget`` is a no-op).
An inode this daemon has not seen is looked for in the listing, then among the
ids of images that were looked up without being listed (``<cache dir>/inodes``).
A data or metadata file's handle is its inode (with ``DIRECT_FH`` for an
``O_DIRECT`` open): its state is rebuilt on demand when a handle opened by an
earlier daemon is read.  Listings and records are cached for ``list_ttl``/``record_ttl``
seconds; a name that is not in the cached listing is looked up in the image
service directly, so a new image is reachable at once, and a name not found
there is not asked for again for ``list_ttl``.  When the service fails, a
stale listing is served (and logged) rather than an error.  Every clock is
``trio.current_time()``, so tests run TTLs under trio's ``MockClock``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import stat
import time
from datetime import datetime
from typing import Any

import trio

from .api import API
from .blocks import BlockReader
from .config import MountConfig
from .context import RequestContext
from .errors import FsError, ImageNotFound
from .ids import is_image_id
from .image import ImageRef
from .names import by_name
from .prefetch import Prefetcher, direct_prefetcher
from .profiles import GUIDED_MISS
from .records import without_locations
from .times import DataTimes

log = logging.getLogger(__name__)

ROOT_INODE = 1
BY_NAME_INODE = 2
_FIRST_IMAGE_INODE = 16
METADATA, DATA, BY_NAME = "metadata.json", "data", "by-name"
_KIND_DIR, _KIND_META, _KIND_DATA, _KIND_LINK = 0, 1, 2, 3
DIRECT_FH = 1 << 63  # in a file handle: opened O_DIRECT
INODES_FILE = "inodes"


def image_inode(image_id: str) -> int:
    """The inode of an image's directory: 61 bits of the id's SHA-256, times 4 (its
    ``metadata.json``, ``data`` and by-name link are the next three)."""
    base = (int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "big") >> 3) << 2
    return base if base >= _FIRST_IMAGE_INODE else base + _FIRST_IMAGE_INODE


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


def metadata_bytes(record: dict[str, Any]) -> bytes:
    """``metadata.json``: the record without its locations, whatever the API
    gave (every user of the host may read the file; a location may hold a
    store's credentials)."""
    return (json.dumps(without_locations(record), indent=2, sort_keys=True) + "\n").encode()


@dataclasses.dataclass
class _Image:
    id: str
    ino: int                    # the directory's; metadata is ino+1, data ino+2
    record: dict[str, Any]
    fetched: float              # trio.current_time() of the record

    @property
    def ref(self) -> ImageRef:
        return ImageRef.of(self.record)


@dataclasses.dataclass
class _Handle:
    image: ImageRef
    prefetcher: Prefetcher | None = None
    content: bytes | None = None   # metadata.json as it was at open
    missed: int = 0                # bytes read that a guiding boot profile did not bring
    paged: bool = True             # the kernel keeps what it reads in its page cache
    opens: int = 0                 # opens this daemon knows of (one when rebuilt)

    def guided(self, size: int, cached: bool) -> bool:
        """Whether the image's boot profile, while it is replayed, stands in for the
        mount's readahead for a read of ``size`` bytes (``cached``: its blocks were
        all cached or coming): until the reader has missed ``GUIDED_MISS`` bytes
        that it did not bring (then it reads something else)."""
        if not cached:
            self.missed += size
        return self.missed < GUIDED_MISS


class ImageFS:
    def __init__(self, api: API, ctx: RequestContext, config: MountConfig, blocks: BlockReader,
                 times: DataTimes | None = None):
        self.api, self.ctx, self.config, self.blocks = api, ctx, config, blocks
        self.times = times if times is not None else DataTimes()  # utime on data files
        self.profiles = None  # BootProfiles, when the mount records and replays them
        self.meta_limiter = trio.CapacityLimiter(4)  # listings never wait behind data fetches
        self._images: dict[str, _Image] = {}
        self._prefetchers: dict[tuple, list] = {}  # (id, version, paged) -> [it, opens]
        # The readahead window; a window over half the memory tier would evict its own
        # blocks before they are read (0: no readahead).
        self._window = min(config.max_readahead, config.memory_cache // 2)
        self._by_ino: dict[int, _Image] = {}
        self._recorded: set[str] | None = None   # ids in <cache dir>/inodes, once read
        self._listing: list[str] | None = None   # sorted, for readdir
        self._listed: set[str] = set()            # the same, for lookups
        self._names: dict[str, str] = {}          # by-name: file name -> image id
        self._listed_at = 0.0
        self._listing_lock = trio.Lock()
        self._missing: dict[str, float] = {}     # id -> when it was not found
        self._handles: dict[int, _Handle] = {}
        self._next_fh = 1
        self._dirs: dict[int, tuple[int, list[str]]] = {}  # fh -> (inode, names)
        self.mounted_at_ns = time.time_ns()
        self.api_calls = {"list": 0, "get": 0}
        # "seconds": what reads spent waiting for their bytes (a boot's stalls)
        self.reads = {"requests": 0, "bytes": 0, "seconds": 0.0}

    @property
    def image_count(self) -> int:
        return len(self._images)

    def known_images(self) -> list[_Image]:
        """Every image the mount has seen a record of."""
        return list(self._images.values())

    # ---- records ----------------------------------------------------------------
    def _remember(self, record: dict[str, Any]) -> _Image:
        image = self._images.get(record["id"])
        if image is None:
            image = _Image(record["id"], image_inode(record["id"]), record,
                           trio.current_time())
            clash = self._by_ino.get(image.ino)
            if clash is not None:  # 61 bits of SHA-256: never seen, but never a wrong file
                raise FsError(errno.EIO, f"images {clash.id} and {image.id} share an inode")
            self._images[image.id] = image
            self._by_ino[image.ino] = image
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
            self._listing = sorted(self._remember(r).id for r in records)
            self._listed = set(self._listing)
            for image_id in listed - self._listed:  # gone, or no longer visible
                self.blocks.forget(image_id)
            self._names = by_name(records)
            self._listed_at = trio.current_time()
            return self._listing

    async def image_ref(self, image_id: str) -> ImageRef:
        """What the data path needs of an active image (ImageNotFound if it is not)."""
        return (await self._image(image_id)).ref

    async def _image(self, image_id: str) -> _Image:
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
        image = self._remember(record)
        if not known and image_id not in self._listed:
            self._record_inode(image_id)
        return image

    def _record_inode(self, image_id: str) -> None:
        """Note an image reached by id without being listed, for the next daemon
        (``_resolve``); an unwritable cache directory only loses that."""
        recorded = self._read_recorded()
        if image_id in recorded:
            return
        recorded.add(image_id)
        try:
            with open(self.config.cache_dir / INODES_FILE, "a") as f:
                f.write(image_id + "\n")
        except OSError as exc:
            log.debug("cannot record inode of %s: %s", image_id, exc)

    def _read_recorded(self) -> set[str]:
        if self._recorded is None:
            try:
                text = (self.config.cache_dir / INODES_FILE).read_text()
            except OSError:
                text = ""
            self._recorded = {w for w in text.split() if len(w) == 36 and w.count("-") == 4}
        return self._recorded

    async def _resolve(self, ino: int) -> tuple[_Image, int]:
        """``_split``, for an inode an earlier daemon gave the kernel too: looked for in
        the listing, then among the recorded ids; ENOENT if neither has it."""
        try:
            return self._split(ino)
        except FsError:
            pass
        if ino < _FIRST_IMAGE_INODE:
            raise FsError(errno.ENOENT, f"no inode {ino}")
        await self.listing()
        base = ino - ino % 4
        if base not in self._by_ino:
            for image_id in self._read_recorded():
                if image_inode(image_id) == base:
                    with contextlib.suppress(ImageNotFound):
                        await self._image(image_id)
                    break
        return self._split(ino)

    # ---- namespace ------------------------------------------------------------------
    def _split(self, ino: int) -> tuple[_Image, int]:
        base = ino - ino % 4
        image = self._by_ino.get(base)
        if image is None or ino - base > _KIND_LINK:
            raise FsError(errno.ENOENT, f"no inode {ino}")
        return image, ino - base

    async def lookup(self, parent: int, name: str) -> Attr:
        if parent == BY_NAME_INODE:
            await self.listing()
            image_id = self._names.get(name)
            if image_id is None or image_id not in self._images:
                raise FsError(errno.ENOENT)
            return self._attr(self._images[image_id], _KIND_LINK)
        if parent == ROOT_INODE:
            if name == BY_NAME:
                return self._by_name_attr()
            if not is_image_id(name):
                raise FsError(errno.ENOENT)
            await self.listing()
            if name in self._listed:
                image = self._images[name]
            else:  # not listed (yet): ask the service, so new images are reachable at once
                image = await self._image(name)
            return self._attr(image, _KIND_DIR)
        image, kind = await self._resolve(parent)
        if kind != _KIND_DIR:
            raise FsError(errno.ENOTDIR)
        if name == METADATA:
            return self._attr(image, _KIND_META)
        if name == DATA:
            return self._attr(image, _KIND_DATA)
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
        image, kind = await self._resolve(ino)
        if kind not in (_KIND_DATA, _KIND_LINK):  # these never change; the record may
            image = await self._image(image.id)
        return self._attr(image, kind)

    def readlink(self, ino: int) -> str:
        image, kind = self._split(ino)
        if kind != _KIND_LINK:
            raise FsError(errno.EINVAL)
        return f"../{image.id}"

    def _attr(self, image: _Image, kind: int) -> Attr:
        record = image.record
        if kind == _KIND_DIR:
            return Attr(image.ino, stat.S_IFDIR | self.config.dir_mode, 0,
                        _ns(record.get("updated_at")), 2,
                        self.config.record_ttl)
        if kind == _KIND_META:
            return Attr(image.ino + 1, stat.S_IFREG | self.config.file_mode,
                        len(metadata_bytes(record)),
                        _ns(record.get("updated_at")), 1, self.config.record_ttl)
        if kind == _KIND_LINK:
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
        image, kind = await self._resolve(ino)
        if kind != _KIND_DATA:
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
            snapshot = sorted(self._names)
        else:
            image, kind = await self._resolve(ino)
            if kind != _KIND_DIR:
                raise FsError(errno.ENOTDIR)
            snapshot = [METADATA, DATA]
        fh = self._new_fh()
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
                image = self._images.get(self._names.get(name, ""))
                if image is None:
                    continue
                attr = self._attr(image, _KIND_LINK)
            elif ino != ROOT_INODE:
                image, _ = self._split(ino)
                attr = self._attr(image, _KIND_META if name == METADATA else _KIND_DATA)
            elif name == BY_NAME:
                attr = self._by_name_attr()
            else:
                image = self._images.get(name)
                if image is None:
                    continue
                attr = self._attr(image, _KIND_DIR)
            out.append((name, attr, i + 1))
        return out

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # ---- files ------------------------------------------------------------------------
    def _new_fh(self) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        return fh

    async def open(self, ino: int, writable: bool, direct: bool = False) -> tuple[int, bool]:
        """A file handle and whether the kernel may keep its cached pages
        (``direct``: opened ``O_DIRECT``, its reads bypass the page cache)."""
        if writable:
            raise FsError(errno.EROFS)
        if ino in (ROOT_INODE, BY_NAME_INODE):
            raise FsError(errno.EISDIR)
        image, kind = await self._resolve(ino)
        if kind == _KIND_DIR:
            raise FsError(errno.EISDIR)
        if kind == _KIND_LINK:
            raise FsError(errno.ELOOP)
        fh = ino | (DIRECT_FH if direct and kind == _KIND_DATA else 0)
        handle = await self._handle(fh, image, kind, refresh=True)
        handle.opens += 1
        if kind == _KIND_DATA and self.profiles is not None:
            self.profiles.opened(handle.image)
        return fh, kind == _KIND_DATA

    async def _handle(self, fh: int, image: _Image, kind: int, refresh: bool) -> _Handle:
        """The state of handle ``fh`` (made if this daemon has none); ``refresh``: a
        ``metadata.json`` handle takes the record as it is now."""
        handle = self._handles.get(fh)
        if kind == _KIND_META:
            if handle is None or refresh:
                image = await self._image(image.id)
                content = metadata_bytes(image.record)
                if handle is None:
                    handle = self._handles[fh] = _Handle(image.ref, content=content)
                handle.content = content
            return handle
        if handle is None:
            ref = image.ref
            paged = not fh & DIRECT_FH
            handle = self._handles[fh] = _Handle(ref, self._prefetcher(ref, +1, paged),
                                                 paged=paged)
            self.blocks.describe(ref, image.record)
            self.blocks.hold(ref)  # released by release(): an image in use keeps its blocks
        return handle

    async def _rebuilt(self, fh: int) -> _Handle:
        """The state of a handle an earlier daemon of the mount opened."""
        try:
            image, kind = await self._resolve(fh & ~DIRECT_FH)
        except FsError:
            raise FsError(errno.EBADF, f"no file handle {fh}") from None
        if kind not in (_KIND_META, _KIND_DATA):
            raise FsError(errno.EBADF, f"no file handle {fh}")
        if fh in self._handles:  # another read rebuilt it meanwhile
            return self._handles[fh]
        handle = await self._handle(fh, image, kind, refresh=False)
        handle.opens = max(handle.opens, 1)
        log.info("rebuilt file handle %#x (%s of image %s)", fh,
                 METADATA if kind == _KIND_META else DATA, image.id)
        return handle

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._handles.get(fh) or await self._rebuilt(fh)
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

    def _prefetcher(self, ref: ImageRef, opened: int, paged: bool = True) -> Prefetcher | None:
        """The readahead of the image's open ``data`` files, one for all of them
        (``opened``: +1 at an open, -1 at a release).  Several readers of one image
        share its pages in the kernel, and the reads that reach the mount from each
        of them have holes where another's readahead read first: several ``dd``s
        of one cold image, each followed alone, looked random (a ranged read per
        block).  Readers that bypass the page cache (``paged`` False: O_DIRECT)
        share one of their own, which stands in for the kernel's readahead
        (``direct_prefetcher``)."""
        if not self._window:
            return None
        key = (ref.id, ref.version, paged)
        entry = self._prefetchers.get(key)
        if entry is None:
            made = Prefetcher(self.config.block_size, self._window) if paged else \
                direct_prefetcher(self.config.block_size, self.config.read_ahead_kb << 10)
            entry = self._prefetchers[key] = [made, 0]
        entry[1] += opened
        if entry[1] <= 0:
            del self._prefetchers[key]
        return entry[0]

    def release(self, fh: int) -> None:
        """One open of ``fh`` ends; its state goes with the last one this daemon knows
        of (a handle an earlier daemon opened is rebuilt if it is read again)."""
        handle = self._handles.get(fh)
        if handle is None:
            return
        handle.opens -= 1
        if handle.opens > 0:
            return
        del self._handles[fh]
        if handle.content is None:  # a data file's
            self.blocks.unhold(handle.image)
            self._prefetcher(handle.image, -1, handle.paged)
