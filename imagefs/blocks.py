"""Blocks of image data: cache tiers, single-flight fetches, streams.

``BlockReader.read(image, offset, size)`` answers a read from blocks.  A block
comes from the memory tier, else the disk tier, else the image service, in
one of two ways:

- **a ranged read** of that one block, for random access (``_fetch``).  One
  fetch per block however many readers want it (``_flights``).
- **a stream** (``_Stream``): one open-ended GET from a block onwards, cut
  into blocks as it arrives.  The prefetcher's sequential readers are served
  this way: each request to Glance costs ~10-15 ms of its CPU whatever its
  size, so one long response is much faster than many ranged reads.  A stream
  may run ``limit`` blocks ahead; the prefetcher raises the limit as the
  reader advances, and the stream pauses (TCP holds the server back) when it
  is too far ahead.  Stores that refuse ranges are read with a stream from
  the image's start that runs to the end.

Blocking work runs in worker threads: ranged reads at most ``fetch_threads``
at once, one thread hop per block; each stream in a thread of its own (at
most ``MAX_STREAMS`` per image); never a thread hop per FUSE request.  A fetched
block must have exactly the expected length, or the read fails.

Concurrency: ``_flights`` and ``_streams`` are touched on the trio thread
only.  A stream's pump thread shares only ``limit``/``closed`` with it, under
the stream's condition variable, and hands blocks over with
``TrioToken.run_sync_soon`` (in order, without waiting for the trio thread).  Between an ``await`` and the next line,
another task may have delivered the same block.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import trio

from .api import API
from .cache import BlockKey, DiskCache, MemoryCache
from .cache.disk import GROUP_BLOCKS
from .context import RequestContext
from .errors import BackendUnavailable, ImagefsError

log = logging.getLogger(__name__)

#: A stream nobody asked to go further for this long ends.
STREAM_IDLE = 20.0
#: Streams per image at once (several readers at different places).
MAX_STREAMS = 4
#: A reader this many blocks past a stream's limit waits for the stream.
STREAM_REACH = 16


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """What a reader needs of an image: fixed while a file is open."""
    id: str
    version: str
    size: int


class _Flight:
    def __init__(self):
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None


class _Stream:
    def __init__(self, image: ImageRef, start: int, limit: int | None):
        self.image = image
        self.position = start           # the next block it will deliver
        self.limit = limit              # it may fetch blocks < limit (None: to the end)
        self.cond = threading.Condition()
        self.closed = False
        self.waiting: dict[int, _Flight] = {}

    def near(self, index: int) -> bool:
        """Whether ``index`` is ahead of it, within its limit or just past it."""
        return not self.closed and self.position <= index and \
            (self.limit is None or index < self.limit + STREAM_REACH)

    def extend(self, limit: int) -> None:
        with self.cond:
            if self.limit is not None and limit > self.limit:
                self.limit = limit
                self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()

    def wait_for_room(self, index: int) -> bool:
        """In the pump thread: block until ``index`` may be fetched; False to stop."""
        with self.cond:
            deadline = time.monotonic() + STREAM_IDLE
            while not self.closed and self.limit is not None and index >= self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return not self.closed


class BlockReader:
    def __init__(self, api: API, ctx: RequestContext, *, block_size: int, memory: MemoryCache,
                 disk: DiskCache | None, fetch_threads: int, read_deadline: float,
                 nursery: trio.Nursery):
        self.api, self.ctx = api, ctx
        self.block_size = block_size
        self.memory, self.disk = memory, disk
        self.read_deadline = read_deadline
        self.nursery = nursery
        self.fetch_limiter = trio.CapacityLimiter(fetch_threads)
        self._flights: dict[BlockKey, _Flight] = {}
        self._streams: dict[str, list[_Stream]] = {}
        self.stats = {"fetched_blocks": 0, "fetched_bytes": 0, "disk_hits": 0,
                      "memory_hits": 0, "streams": 0}

    def key(self, image: ImageRef, index: int) -> BlockKey:
        return BlockKey(image.id, image.version, self.block_size, index)

    def block_length(self, image: ImageRef, index: int) -> int:
        return max(0, min(self.block_size, image.size - index * self.block_size))

    def _blocks(self, image: ImageRef) -> int:
        return (image.size + self.block_size - 1) // self.block_size

    # ---- reading --------------------------------------------------------------
    async def read(self, image: ImageRef, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset+size)`` of the image, short only at its end.

        Raises ``BackendUnavailable`` if the blocks do not come within
        ``read_deadline`` seconds (the fetch itself goes on for later readers).
        """
        end = min(offset + size, image.size)
        if offset >= end:
            return b""
        bs = self.block_size
        try:
            with trio.fail_after(self.read_deadline):
                parts = []
                for index in range(offset // bs, (end - 1) // bs + 1):
                    data = await self.block(image, index)
                    parts.append(data[max(offset - index * bs, 0):end - index * bs])
        except trio.TooSlowError:
            raise BackendUnavailable(f"image {image.id}: no data within "
                                     f"{self.read_deadline:g}s") from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def block(self, image: ImageRef, index: int) -> bytes:
        key = self.key(image, index)
        data = self.memory.get(key)
        if data is not None:
            self.stats["memory_hits"] += 1
            return data
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
            stream = self._stream_near(image, index)
            if stream is not None:  # it will be here soon: one fetch, not two
                stream.extend(index + 1)
                stream.waiting[index] = flight
            elif self.api.ranges_supported(self.ctx, image.id):
                self.nursery.start_soon(self._fetch, image, index, flight)
            else:
                self._open_stream(image, 0, None).waiting[index] = flight
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.data

    def prefetch(self, image: ImageRef, start: int, end: int) -> None:
        """Keep a stream running ahead of a sequential reader to cover ``[start, end)``."""
        end = min(end, image.size)
        if start >= end:
            return
        first = start // self.block_size
        limit = (end - 1) // self.block_size + 1
        # Blocks already cached (memory, or disk: read in the background) need no
        # stream.  At the first block in neither tier, a stream that is there or
        # nearly there goes further; only if there is none does a new one start.
        while first < limit:
            key = self.key(image, first)
            if key in self.memory or key in self._flights:
                first += 1
            elif self.disk is not None and key in self.disk:
                first += self._load_disk_run(image, first, limit)
            else:
                stream = self._stream_near(image, first)
                if stream is not None:
                    stream.extend(limit)
                else:
                    self._open_stream(image, first, limit)
                return

    # ---- runs of blocks from the disk tier -------------------------------------------
    def _load_disk_run(self, image: ImageRef, first: int, limit: int) -> int:
        """Start loading the disk-cached blocks from ``first`` on (before ``limit``, in
        one group file) with one read; returns how many."""
        group = first // GROUP_BLOCKS
        flights = []
        index = first
        while index < limit and index // GROUP_BLOCKS == group:
            key = self.key(image, index)
            if key in self.memory or key in self._flights or key not in self.disk:
                break
            flight = self._flights[key] = _Flight()
            flights.append(flight)
            index += 1
        self.nursery.start_soon(self._load_run, image, first, flights)
        return len(flights)

    async def _load_run(self, image: ImageRef, first: int, flights: list[_Flight]) -> None:
        """Fill ``flights`` (blocks ``first``...) from the disk tier, each as soon as it
        is read; a block that is not there after all is fetched.  Never raises."""
        keys = [self.key(image, first + i) for i in range(len(flights))]
        token = trio.lowlevel.current_trio_token()
        done = [False] * len(keys)

        def deliver(i: int, data: bytes | None) -> None:  # on the trio thread
            done[i] = True
            index, key, flight = first + i, keys[i], flights[i]
            if data is not None and len(data) == self.block_length(image, index):
                self.stats["disk_hits"] += 1
                self.memory.put(key, data)
                flight.data = data
                del self._flights[key]
                flight.done.set()
            else:
                self.nursery.start_soon(self._fetch, image, index, flight)

        def work() -> None:  # in a worker thread
            for i, data in enumerate(self.disk.iter_run(keys)):
                token.run_sync_soon(deliver, i, data)

        try:
            await trio.to_thread.run_sync(work, limiter=self.fetch_limiter,
                                          abandon_on_cancel=True)
        except Exception:  # iter_run turns OSErrors into misses: this is a bug
            log.exception("unexpected error loading blocks of image %s from disk", image.id)
        # Deliveries queued before the thread returned have run by now.
        for i in range(len(keys)):
            if not done[i]:
                deliver(i, None)

    # ---- one block by a ranged read ---------------------------------------------------
    async def _fetch(self, image: ImageRef, index: int, flight: _Flight) -> None:
        """Fill ``flight`` from the disk tier or a ranged read; never raises."""
        key = self.key(image, index)
        want = self.block_length(image, index)
        disk = self.disk

        def work() -> tuple[bytes, bool]:  # in a worker thread
            if disk is not None:
                data = disk.load(key)
                if data is not None and len(data) == want:
                    return data, True
            data = self.api.read(self.ctx, image.id, index * self.block_size, want)
            if len(data) != want:
                raise BackendUnavailable(f"image {image.id}: block {index} came back with "
                                         f"{len(data)} bytes, expected {want}")
            if disk is not None:
                disk.store(key, data)
            return data, False

        try:
            data, from_disk = await trio.to_thread.run_sync(
                work, limiter=self.fetch_limiter, abandon_on_cancel=True)
            self.stats["disk_hits" if from_disk else "fetched_blocks"] += 1
            if not from_disk:
                self._count_fetch(len(data))
            self.memory.put(key, data)
            flight.data = data
        except (ImagefsError, OSError) as exc:
            flight.error = exc
        except Exception as exc:  # a bug: fail this block's readers, keep the mount
            log.exception("unexpected error fetching block %d of image %s", index, image.id)
            flight.error = exc
        finally:
            del self._flights[key]
            flight.done.set()

    def _count_fetch(self, n: int) -> None:
        self.stats["fetched_bytes"] += n

    # ---- streams ----------------------------------------------------------------------
    def _stream_near(self, image: ImageRef, index: int) -> _Stream | None:
        return next((s for s in self._streams.get(image.id, ()) if s.near(index)), None)

    def _open_stream(self, image: ImageRef, start: int, limit: int | None) -> _Stream:
        streams = self._streams.setdefault(image.id, [])
        if len(streams) >= MAX_STREAMS:
            streams[0].close()
        stream = _Stream(image, start, limit)
        streams.append(stream)
        self.stats["streams"] += 1
        log.debug("image %s: streaming from block %d", image.id, start)
        self.nursery.start_soon(self._run_stream, stream)
        return stream

    async def _run_stream(self, stream: _Stream) -> None:
        image, bs, disk = stream.image, self.block_size, self.disk
        token = trio.lowlevel.current_trio_token()
        last = self._blocks(image)

        def deliver(index: int, data: bytes) -> None:  # on the trio thread; must not raise
            stream.position = index + 1
            key = self.key(image, index)
            self.memory.put(key, data)
            self.stats["fetched_blocks"] += 1
            self._count_fetch(len(data))
            flight = stream.waiting.pop(index, None)
            if flight is not None:
                flight.data = data
                del self._flights[key]
                flight.done.set()

        def pump() -> None:  # in a worker thread
            index = stream.position
            if not stream.wait_for_room(index):
                return
            buf = bytearray()
            for chunk in self.api.stream(self.ctx, image.id, index * bs):
                if not buf and len(chunk) == self.block_length(image, index):
                    blocks = [chunk]  # the usual case: the driver's chunks are blocks
                else:
                    buf += chunk
                    blocks = []
                    while buf and len(buf) >= self.block_length(image, index + len(blocks)):
                        n = self.block_length(image, index + len(blocks))
                        blocks.append(bytes(buf[:n]))
                        del buf[:n]
                for data in blocks:
                    if disk is not None:
                        disk.store_later(self.key(image, index), data)
                    # Hand over without waiting for the trio thread: the pump goes on reading.
                    token.run_sync_soon(deliver, index, data)
                    index += 1
                    if index >= last or not stream.wait_for_room(index):
                        return
            if index < last:
                raise BackendUnavailable(f"image {image.id}: stream ended at block {index}")

        error: BaseException | None = None
        try:
            await trio.to_thread.run_sync(pump, abandon_on_cancel=True)
        except (ImagefsError, OSError) as exc:
            log.warning("image %s: stream from block %d failed: %s", image.id,
                        stream.position, exc)
            error = exc
        except trio.Cancelled:
            stream.close()
            raise
        except Exception as exc:
            log.exception("unexpected error streaming image %s", image.id)
            error = exc
        finally:
            stream.closed = True
            streams = self._streams.get(image.id, [])
            if stream in streams:
                streams.remove(stream)
            if not streams:
                self._streams.pop(image.id, None)
        # Readers still waiting on this stream: fail them, or fetch their block anew.
        for index, flight in stream.waiting.items():
            if error is not None:
                del self._flights[self.key(image, index)]
                flight.error = error
                flight.done.set()
            elif self.api.ranges_supported(self.ctx, image.id):
                self.nursery.start_soon(self._fetch, image, index, flight)
            else:
                self._open_stream(image, 0, None).waiting[index] = flight
