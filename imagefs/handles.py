"""Open files: the state behind each file handle, and the readahead per image.

A ``data`` or ``metadata.json`` file's handle is its inode, with ``DIRECT_FH``
for a ``data`` file opened ``O_DIRECT``: it means the same to every daemon of
the mount (``imagefs.inodes``).  So a handle an earlier daemon opened is
rebuilt on demand when it is read (``FileHandles.get``), and its state goes
with the last release this daemon knows of.

A ``data`` file's handle holds the image's blocks in the cache while it is open
(``BlockReader.hold``) and shares the image's readahead with the other open
``data`` files of the image (``FileHandles._prefetcher``).  A ``metadata.json``
handle holds the file's bytes as they were at open.
"""

from __future__ import annotations

import dataclasses
import errno
import logging

from .blocks import BlockReader
from .config import MountConfig
from .errors import FsError
from .image import ImageRef
from .inodes import KIND_DATA, KIND_META
from .listing import ImageRecords, KnownImage, metadata_bytes
from .prefetch import Prefetcher, direct_prefetcher
from .profiles import GUIDED_MISS

log = logging.getLogger(__name__)

DIRECT_FH = 1 << 63  # in a file handle: opened O_DIRECT


@dataclasses.dataclass
class Handle:
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


class FileHandles:
    """The open ``data`` and ``metadata.json`` files of a mount."""

    def __init__(self, config: MountConfig, blocks: BlockReader, records: ImageRecords):
        self.config, self.blocks, self.records = config, blocks, records
        self._handles: dict[int, Handle] = {}
        self._prefetchers: dict[tuple, list] = {}  # (id, version, paged) -> [it, opens]
        # The readahead window; a window over half the memory tier would evict its own
        # blocks before they are read (0: no readahead).
        self._window = min(config.max_readahead, config.memory_cache // 2)

    async def open(self, ino: int, image: KnownImage, kind: int,
                   direct: bool) -> tuple[int, Handle]:
        """Open inode ``ino``, which is ``image``'s file of ``kind`` (``KIND_META``
        or ``KIND_DATA``): its handle, and the handle's state."""
        fh = ino | (DIRECT_FH if direct and kind == KIND_DATA else 0)
        handle = await self._handle(fh, image, kind, refresh=True)
        handle.opens += 1
        return fh, handle

    async def get(self, fh: int) -> Handle:
        """The state of handle ``fh``, rebuilt if an earlier daemon opened it;
        EBADF if it is no file's."""
        return self._handles.get(fh) or await self._rebuilt(fh)

    async def _handle(self, fh: int, image: KnownImage, kind: int, refresh: bool) -> Handle:
        """The state of handle ``fh`` (made if this daemon has none); ``refresh``: a
        ``metadata.json`` handle takes the record as it is now."""
        handle = self._handles.get(fh)
        if kind == KIND_META:
            if handle is None or refresh:
                image = await self.records.image(image.id)
                content = metadata_bytes(image.record)
                if handle is None:
                    handle = self._handles[fh] = Handle(image.ref, content=content)
                handle.content = content
            return handle
        if handle is None:
            ref = image.ref
            paged = not fh & DIRECT_FH
            handle = self._handles[fh] = Handle(ref, self._prefetcher(ref, +1, paged),
                                                paged=paged)
            self.blocks.describe(ref, image.record)
            self.blocks.hold(ref)  # released by release(): an image in use keeps its blocks
        return handle

    async def _rebuilt(self, fh: int) -> Handle:
        """The state of a handle an earlier daemon of the mount opened."""
        try:
            image, kind = await self.records.resolve(fh & ~DIRECT_FH)
        except FsError:
            raise FsError(errno.EBADF, f"no file handle {fh}") from None
        if kind not in (KIND_META, KIND_DATA):
            raise FsError(errno.EBADF, f"no file handle {fh}")
        if fh in self._handles:  # another read rebuilt it meanwhile
            return self._handles[fh]
        handle = await self._handle(fh, image, kind, refresh=False)
        handle.opens = max(handle.opens, 1)
        log.info("rebuilt file handle %#x (%s of image %s)", fh,
                 "metadata.json" if kind == KIND_META else "data", image.id)
        return handle

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
