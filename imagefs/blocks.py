"""Blocks of image data: a read, the prefetch hint, and dispatch.

``BlockReader.read(image, offset, size)`` answers a read from blocks.  A
block comes from the memory tier, else from one **flight** per block
(``imagefs.flights``), however many readers want it.  A new flight is sent
the cheapest way (``_dispatch``): the disk tier, a stream already coming
that way (``imagefs.streams``: a sequential reader's prefetch stream, or the
stream from the start of an image whose store refuses ranges), else a ranged
read (``imagefs.warm``), retried until its deadline.

Deadlines.  A read has one deadline, ``read_deadline`` after it arrived.  A
flight has the deadline of the read that started it, and is abandoned then:
its readers get ``BackendUnavailable`` (EIO), the thread of a stalled request
is left to end on its own timeout, and the next reader starts a new flight.

What lives elsewhere: per-image state (source, streams, refused ranges,
distrust, bytes fetched) in ``imagefs.image``; the hash check of direct
sources in ``imagefs.sources.verify``; write-behind for the disk tier in
``imagefs.cache.tiered``; warm-ups and ranged runs in ``imagefs.warm``.

Concurrency: flights, streams and the tiers' memory side are touched on the
trio thread only.  Worker threads run the blocking calls (ranged reads at
most ``fetch_threads`` at once; each stream in a thread of its own) and hand
blocks back with ``TrioToken.run_sync_soon``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from .cache import BlockKey, TieredCache
from .errors import BackendUnavailable, ImagefsError
from .flights import FAILURE_GRACE, Flight, Flights
from .image import ImageRef, Images, ImageState
from .retry import RetryPolicy
from .sources import Source
from .streams import StreamSet
from .warm import Runs

__all__ = ["FAILURE_GRACE", "BlockReader", "ImageRef"]

log = logging.getLogger(__name__)


class BlockReader:
    def __init__(self, open_source: Callable[[ImageRef, bool], Source], cache: TieredCache, *,
                 block_size: int, fetch_threads: int, read_deadline: float,
                 retry: RetryPolicy, nursery: trio.Nursery):
        self.cache = cache
        self.block_size = block_size
        self.read_deadline = read_deadline
        self.nursery = nursery
        self.fetch_limiter = trio.CapacityLimiter(fetch_threads)
        self._stats = {"fetched_blocks": 0, "fetched_bytes": 0, "disk_hits": 0,
                       "memory_hits": 0, "streams": 0, "retries": 0}
        self.retry = retry
        self.flights = Flights()
        self.images = Images(open_source, cache, self.flights, block_size=block_size,
                             nursery=nursery, stats=self._stats, make_streams=self._streams_of)
        self.runs = Runs(cache, self.flights, limiter=self.fetch_limiter, retry=retry,
                         read_deadline=read_deadline, stats=self._stats, nursery=nursery,
                         fetch=self._fetch)

    def _streams_of(self, image: ImageState) -> StreamSet:
        return StreamSet(image, cache=self.cache, flights=self.flights, nursery=self.nursery,
                         retry=self.retry, stats=self._stats, dispatch=self._dispatch)

    # ---- what the mount asks of it ------------------------------------------------------
    @property
    def stats(self) -> dict:
        """The mount's counters of the data path (the disk tier's write-behind too)."""
        return {**self._stats, **self.cache.stats}

    def key(self, image: ImageRef, index: int) -> BlockKey:
        return BlockKey(image.id, image.version, self.block_size, index)

    def hold(self, image: ImageRef) -> None:
        """A ``data`` file of the image is open (one ``unhold`` per ``hold``)."""
        self.images.hold(image)

    def unhold(self, image: ImageRef) -> None:
        self.images.unhold(image)

    def forget(self, image_id: str) -> None:
        """The image is gone from the service: its state goes once nothing uses it."""
        self.images.forget(image_id)

    def describe(self, image: ImageRef, record: dict) -> None:
        """The image's name and visibility, for the disk tier's index of what it holds."""
        self.cache.describe(self.key(image, 0), name=record.get("name"), size=image.size,
                            visibility=record.get("visibility"))

    def keep_last(self, image: ImageRef, indices) -> None:
        """Blocks of the image (a boot profile's) the disk tier evicts after its others."""
        self.cache.keep_last(self.key(image, 0), indices)

    def path(self, image_id: str) -> str | None:
        """Where the image's data comes from (``ImageState.path``); None before its
        first fetch."""
        state = self.images.get(image_id)
        return state.path() if state is not None else None

    @property
    def fetched_by_image(self) -> dict[str, int]:
        """Bytes fetched from a source, per image in use."""
        return {state.ref.id: state.fetched for state in self.images}

    @property
    def unwritten_blocks(self) -> int:
        """Streamed blocks the disk tier is behind on."""
        return self.cache.unwritten_blocks

    @property
    def _unwritten(self) -> dict:  # the disk tier's write-behind, for tests
        return self.cache._unwritten

    def streams_open(self) -> int:
        return sum(len(state.streams) for state in self.images)

    def close(self) -> None:
        """Queue for the disk tier what it fell behind on and the memory tier still
        holds (waiting for room), and release every source (connections, open images)."""
        self.cache.write_behind_all()
        self.images.close()

    # ---- reading --------------------------------------------------------------------------
    async def read(self, ref: ImageRef, offset: int, size: int, *, paged: bool = False,
                   grace: bool = True, ahead: tuple[int, int] | None = None,
                   guided: Callable[[bool], bool] | None = None) -> bytes:
        """Bytes ``[offset, offset+size)`` of the image, short only at its end.

        ``paged``: the reader's kernel keeps what it is given in its page cache
        (a file not opened ``O_DIRECT``); a block given whole to it then leaves
        the memory tier (``TieredCache.served_whole``).  ``grace``: a block whose
        flight failed less than ``FAILURE_GRACE`` seconds ago fails at once (the
        kernel's immediate re-read of a failed buffered page; not for O_DIRECT
        readers, whose re-read is the application's).  ``ahead``: the byte range
        to bring in ahead of a sequential reader (``prefetch``); ``guided(cached)``
        is told whether the read's blocks were all cached or coming, and says
        whether ``ahead`` is to load only what the disk tier holds (a boot
        profile stands in for the readahead).

        Raises ``BackendUnavailable`` if the blocks do not come within
        ``read_deadline`` seconds, or the error that ended their fetch.
        """
        image = self.images.of(ref)
        end = min(offset + size, ref.size)
        if offset >= end:
            return b""
        deadline = trio.current_time() + self.read_deadline
        indexes = image.indexes(offset, end)
        found: list[bytes | Flight | None] = []
        for index in indexes:
            key = image.key(index)
            data = self.cache.get(key)
            if data is not None:
                self._stats["memory_hits"] += 1
            found.append(data if data is not None else self.flights.get(key))
        if guided is not None:
            cached = all(item is not None or self.cache.on_disk(image.key(index))
                         for index, item in zip(indexes, found))
            cached_only = guided(cached)
        else:
            cached_only = False
        if ahead is not None and ahead[1] > ahead[0]:
            self.prefetch(ref, ahead[0], ahead[1], cached_only=cached_only)
        # Every missing block's flight starts before waiting on any of them.
        found = [item if item is not None else self._flight(image, index, deadline, grace)
                 for index, item in zip(indexes, found)]
        bs = self.block_size
        parts = []
        for index, item in zip(indexes, found):
            data = item if isinstance(item, bytes) else await self.flights.wait(
                item, deadline, lambda: self._late(image),
                lambda failed: self._again(image, failed, deadline))
            part = data[max(offset - index * bs, 0):end - index * bs]
            parts.append(part)
            if paged and part is data:
                self.cache.served_whole(image.key(index))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _late(self, image: ImageState) -> BackendUnavailable:
        return BackendUnavailable(f"image {image.ref.id}: no data within "
                                  f"{self.read_deadline:g}s")

    def _flight(self, image: ImageState, index: int, deadline: float, grace: bool) -> Flight:
        """The block's flight: the one under way, else a new one.  With ``grace``,
        raises the error of one that failed less than ``FAILURE_GRACE`` seconds ago."""
        key = image.key(index)
        flight = self.flights.get(key)
        if flight is not None:
            return flight
        if grace and (error := self.flights.failed_recently(key)) is not None:
            raise error
        flight = self.flights.new(key, deadline)
        self._dispatch(image, index, flight, missed=True)
        return flight

    def _again(self, image: ImageState, failed: Flight, deadline: float) -> bytes | Flight:
        """A flight an earlier reader started gave up; this reader has time left."""
        data = self.cache.get(failed.key)
        if data is not None:
            return data
        flight = self.flights.get(failed.key)
        if flight is None:
            flight = self.flights.new(failed.key, deadline)
            self._dispatch(image, failed.key.index, flight, missed=True)
        return flight

    def _dispatch(self, image: ImageState, index: int, flight: Flight,
                  missed: bool = False) -> None:
        """Send ``flight`` the cheapest way: memory (it may have come meanwhile, unless
        the caller has just ``missed`` it there), disk, a stream coming anyway, a
        ranged read."""
        data = None if missed else self.cache.get(flight.key)
        if data is not None:
            self.flights.complete(flight, data)
        elif self.cache.on_disk(flight.key):
            self.nursery.start_soon(self._fetch, image, index, flight)
        elif image.no_ranges:
            image.streams.wait_from_start(index, flight)
        elif (stream := image.streams.near(index)) is not None:
            stream.extend(index + 1)
            stream.attach(index, flight)
        else:
            self.nursery.start_soon(self._fetch, image, index, flight)

    # ---- one block: from the disk tier, else by a ranged read ----------------------------
    async def _fetch(self, image: ImageState, index: int, flight: Flight,
                     disk: bool = True) -> None:
        """Fill ``flight`` from the disk tier or ranged reads, until its deadline."""
        try:
            with trio.move_on_at(flight.deadline):
                data = await self._fetch_block(image, index, flight, disk)
                if data is not None:
                    self.flights.complete(flight, data)
                return
            self.flights.fail(flight, self._late(image))
        except ImagefsError as exc:
            self.flights.fail(flight, exc)
        except Exception as exc:  # a bug: fail this block's readers, keep the mount
            log.exception("unexpected error fetching block %d of image %s", index, image.ref.id)
            self.flights.fail(flight, BackendUnavailable(f"image {image.ref.id}: {exc!r}"))

    async def _fetch_block(self, image: ImageState, index: int, flight: Flight,
                           disk: bool) -> bytes | None:
        """The block's bytes, or None when it was handed to a stream."""
        key = flight.key
        if disk and self.cache.on_disk(key):
            data = await trio.to_thread.run_sync(self.cache.load, key,
                                                 limiter=self.fetch_limiter,
                                                 abandon_on_cancel=True)
            if data is not None and len(data) == image.block_length(index):
                self._stats["disk_hits"] += 1
                self.cache.put(key, data)
                return data
        if image.no_ranges:
            image.streams.wait_from_start(index, flight)
            return None
        pieces = await self.runs.ranged(image, index, [flight])
        if pieces is None:  # the store refuses ranges: the flight waits for a stream
            return None
        image.count(pieces[0])
        self.cache.put(key, pieces[0])
        return pieces[0]

    # ---- ahead of readers ---------------------------------------------------------------
    def prefetch(self, ref: ImageRef, start: int, end: int, cached_only: bool = False) -> None:
        """Bring ``[start, end)`` in ahead of a sequential reader: disk runs loaded,
        and one stream (one that is there or nearly there goes further); with
        ``cached_only``, only the disk runs."""
        image = self.images.of(ref)
        blocks = image.indexes(start, end)
        first, limit = blocks.start, blocks.stop
        while first < limit:
            key = image.key(first)
            if self.cache.in_memory(key) or key in self.flights:
                first += 1
            elif self.cache.on_disk(key):
                first += self.runs.load_from_disk(image, first, limit)
            elif cached_only:
                first += 1
            elif image.no_ranges:
                image.streams.from_start()  # it reads to the end anyway
                return
            else:
                stream = image.streams.near(first)
                if stream is not None:
                    stream.extend(limit)
                else:
                    image.streams.open(first, limit, seekable=True)
                return

    async def warm(self, ref: ImageRef, ranges, progress: Callable[[dict], None] | None = None,
                   *, in_memory: bool = False) -> dict:
        """Bring the blocks of byte ``ranges`` into the cache ahead of any reader
        (``Runs.warm``); the figures of the warm-up."""
        return await self.runs.warm(self.images.of(ref), ranges, progress, in_memory)
