"""What the data path knows of each image, in one object per image.

``ImageRef`` is what a reader needs of an image, fixed while a file is open:
its id, its version (what identifies its bytes), its size, and the hash a
whole read from a direct source is checked with.

``ImageState`` is the mount's per-image state on the data path: the image's
source (opened once), its streams, whether its store refuses ranges, whether
its direct bytes failed their hash, the bytes fetched for it, and the number
of open ``data`` files.  ``Images`` makes one per image on first use
(``of``) and drops it when the image is gone (``forget``): at once if
nothing of it is in use, else once nothing is.

Everything here runs on the trio thread, except ``open_source`` (a worker
thread) and the verifying source's callback (see ``sources.verify``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .cache import BlockKey, TieredCache
from .cache.keys import image_version
from .flights import Flights
from .sources import GLANCE, Source
from .sources.verify import VerifyingSource, check, needs_check

if TYPE_CHECKING:
    from .streams import StreamSet

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """What a reader needs of an image: fixed while a file is open."""
    id: str
    version: str
    size: int
    hash_algo: str | None = None   # what a whole read from a direct source is checked with
    hash_value: str | None = None

    @classmethod
    def of(cls, record: dict[str, Any]) -> ImageRef:
        """The reference of an image record: its multihash if it has one, else its md5."""
        algo, value = record.get("os_hash_algo"), record.get("os_hash_value")
        if not (algo and value):
            algo, value = ("md5", record["checksum"]) if record.get("checksum") else (None, None)
        return cls(record["id"], image_version(record), record.get("size") or 0, algo, value)


class ImageState:
    """One image on the data path (made by ``Images``)."""

    def __init__(self, ref: ImageRef, images: Images):
        self.ref = ref
        self.block_size = images.block_size
        self.blocks = (ref.size + self.block_size - 1) // self.block_size
        self._images = images
        self._source: Source | trio.Event | None = None  # an Event while it opens
        self.no_ranges = False    # its store refuses ranges: one stream from the start
        self.distrusted = False   # its direct bytes failed its hash: read via the service
        self.fetched = 0          # bytes fetched from its source
        self.holds = 0            # open ``data`` files
        self.gone = False         # dropped when its last ``data`` file is closed
        self.streams: StreamSet = images.make_streams(self)

    # ---- block arithmetic ---------------------------------------------------------
    def key(self, index: int) -> BlockKey:
        return BlockKey(self.ref.id, self.ref.version, self.block_size, index)

    def block_length(self, index: int) -> int:
        return max(0, min(self.block_size, self.ref.size - index * self.block_size))

    def indexes(self, start: int, end: int) -> range:
        """The blocks that hold bytes ``[start, end)`` (clipped to the image)."""
        start, end = max(0, start), min(end, self.ref.size)
        if start >= end:
            return range(0)
        return range(start // self.block_size, (end - 1) // self.block_size + 1)

    # ---- its source -----------------------------------------------------------------
    async def source(self) -> Source:
        """The image's source, opened once (in a worker thread: it may ask the
        service for the image's locations, and connect to its store)."""
        while True:
            entry = self._source
            if isinstance(entry, trio.Event):
                await entry.wait()
                continue
            if entry is not None:
                return entry
            opened = self._source = trio.Event()
            try:
                source = await trio.to_thread.run_sync(self._images.open, self,
                                                       abandon_on_cancel=True)
            except BaseException:
                self._source = None
                raise
            finally:
                opened.set()
            self._source = source
            log.info("image %s: data from %s", self.ref.id, self.path())
            return source

    def path(self) -> str | None:
        """Where the image's data comes from: ``rbd``, ``file``, ``glance-ranged``,
        ``glance-stream``, ``local``; None before its first fetch."""
        source = self._source
        if source is None or isinstance(source, trio.Event):
            return None
        if source.kind == GLANCE:
            return "glance-stream" if self.no_ranges else "glance-ranged"
        return source.kind

    def close_source(self) -> None:
        source, self._source = self._source, None
        if source is not None and not isinstance(source, trio.Event):
            source.close()

    # ---- what happened to it ------------------------------------------------------------
    def count(self, data: bytes) -> None:
        """``data`` came from the image's source."""
        stats = self._images.stats
        stats["fetched_blocks"] += 1
        stats["fetched_bytes"] += len(data)
        self.fetched += len(data)

    def refuse_ranges(self) -> None:
        """The image's store refused a ranged read (``RangesRefused``): from now on
        its blocks come from one stream from the start, which every reader waits for."""
        if not self.no_ranges:
            log.warning("image %s: its store refuses Range requests; reading it with one "
                        "stream from the start, which every reader waits for "
                        "(glance-stream)", self.ref.id)
            self.no_ranges = True

    def idle(self) -> bool:
        return not self.holds and not len(self.streams) and \
            not self._images.flights.busy(self.ref.id)


class Images:
    """The ``ImageState`` of each image in use, by id."""

    def __init__(self, open_source: Callable[[ImageRef, bool], Source], cache: TieredCache,
                 flights: Flights, *, block_size: int, nursery: trio.Nursery, stats: dict,
                 make_streams: Callable[[ImageState], StreamSet]):
        self.open_source, self.cache, self.flights = open_source, cache, flights
        self.block_size, self.nursery, self.stats = block_size, nursery, stats
        self.make_streams = make_streams
        self._images: dict[str, ImageState] = {}
        self._token = trio.lowlevel.current_trio_token()

    def of(self, ref: ImageRef) -> ImageState:
        """The image's state, made on first use."""
        state = self._images.get(ref.id)
        if state is None:
            state = self._images[ref.id] = ImageState(ref, self)
        return state

    def get(self, image_id: str) -> ImageState | None:
        return self._images.get(image_id)

    def __iter__(self):
        return iter(list(self._images.values()))

    def open(self, state: ImageState) -> Source:
        """In a worker thread: the image's source, checked if it is a direct one."""
        ref = state.ref
        source = self.open_source(ref, not state.distrusted)
        if not needs_check(source, ref.hash_algo):
            return source

        def whole() -> None:  # in a worker thread
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self.nursery.start_soon, self._check, state,
                                          source.kind)
        return VerifyingSource(source, size=ref.size, block_size=self.block_size,
                               on_whole=whole)

    async def _check(self, state: ImageState, kind: str) -> None:
        ref = state.ref

        async def read_block(index: int) -> bytes | None:
            key = state.key(index)
            data = self.cache.get(key)
            flight = self.flights.get(key) if data is None else None
            if flight is not None:  # the block passed the source and is on its way
                await flight.done.wait()
                data = flight.data
            if data is None:
                data = await trio.to_thread.run_sync(self.cache.load, key)
            return data if data is not None and len(data) == state.block_length(index) \
                else None

        if await check(ref.id, kind, state.blocks, ref.hash_algo, ref.hash_value,
                       read_block) is False:
            state.distrusted = True
            state.close_source()
            self.cache.discard_from_memory(ref.id)
            await trio.to_thread.run_sync(self.cache.discard_image, state.key(0))

    # ---- in use, and gone -------------------------------------------------------------
    def hold(self, ref: ImageRef) -> None:
        """A ``data`` file of the image is open: the disk tier keeps its blocks while it
        can evict others (one ``unhold`` per ``hold``)."""
        state = self.of(ref)
        state.holds += 1
        self.cache.hold(state.key(0))

    def unhold(self, ref: ImageRef) -> None:
        state = self.of(ref)
        state.holds -= 1
        self.cache.unhold(state.key(0))
        if state.gone:
            self.forget(ref.id)

    def forget(self, image_id: str) -> None:
        """The image is gone from the service (deleted, or no longer visible): its
        state is dropped now if nothing of it is in use (no open ``data`` file, no
        stream, no block on its way), else at the release of its last ``data``
        file or at the next ``forget``."""
        state = self._images.get(image_id)
        if state is None:
            return
        state.gone = True
        if state.idle():
            del self._images[image_id]
            state.close_source()

    def close(self) -> None:
        """Release every source (connections, open images)."""
        for state in self._images.values():
            state.close_source()
