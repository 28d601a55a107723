"""Blocks of image data: cache tiers, single-flight fetches, streaming fallback.

``BlockReader.read(image, offset, size)`` answers a read from blocks.  A block
comes from the memory tier, else the disk tier, else the image service:

- one fetch per block however many readers want it (``_flights``);
- fetches run in worker threads, at most ``fetch_threads`` at once, one
  thread hop per block (fetch *and* disk store), never per request;
- ``prefetch`` starts background fetches of blocks ahead of a sequential
  reader, neighbouring blocks in one ranged read of up to ``max_fetch``
  bytes; their failures reach only readers waiting for those blocks (a later
  reader fetches the block again);
- a fetched block must have exactly the expected length, or the read fails;
- for stores that refuse ranges, blocks are filled by streaming the image
  from its start (``_Stream``), serving waiting readers as it passes them.

Concurrency: every attribute here is touched on the trio thread only, except
inside functions passed to ``trio.to_thread.run_sync``, which see only their
arguments and the thread-safe caches.  Between an ``await`` and the next
line, another task may have fetched the same block: re-check the memory tier
after waiting.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import trio

from .api import API
from .cache import BlockKey, DiskCache, MemoryCache
from .context import RequestContext
from .errors import BackendUnavailable, ImagefsError

log = logging.getLogger(__name__)


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
    """One pass over an image from its start, for stores without ranges."""

    def __init__(self):
        self.position = 0              # blocks completed so far
        self.finished = False
        self.waiting: dict[int, _Flight] = {}


class BlockReader:
    def __init__(self, api: API, ctx: RequestContext, *, block_size: int, memory: MemoryCache,
                 disk: DiskCache | None, fetch_threads: int, read_deadline: float,
                 nursery: trio.Nursery, max_fetch: int | None = None,
                 on_fetch: Callable[[int], None] | None = None):
        self.api, self.ctx = api, ctx
        self.block_size = block_size
        self.memory, self.disk = memory, disk
        self.read_deadline = read_deadline
        self.max_fetch = max_fetch or 8 * block_size
        self.nursery = nursery
        self.fetch_limiter = trio.CapacityLimiter(fetch_threads)
        self.on_fetch = on_fetch
        self._flights: dict[BlockKey, _Flight] = {}
        self._streams: dict[str, list[_Stream]] = {}
        self.stats = {"fetched_blocks": 0, "fetched_bytes": 0, "disk_hits": 0, "memory_hits": 0}

    def key(self, image: ImageRef, index: int) -> BlockKey:
        return BlockKey(image.id, image.version, self.block_size, index)

    def block_length(self, image: ImageRef, index: int) -> int:
        return max(0, min(self.block_size, image.size - index * self.block_size))

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
            self._start(image, [index])
            flight = self._flights[key]
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.data

    def prefetch(self, image: ImageRef, start: int, end: int) -> None:
        """Fetch the blocks covering ``[start, end)`` in the background, runs of
        neighbouring missing blocks in one request of up to ``max_fetch`` bytes."""
        end = min(end, image.size)
        if start >= end:
            return
        run: list[int] = []
        for index in range(start // self.block_size, (end - 1) // self.block_size + 1):
            key = self.key(image, index)
            if key in self._flights or key in self.memory:
                if run:
                    self._start(image, run)
                run = []
                continue
            run.append(index)
            if len(run) * self.block_size >= self.max_fetch:
                self._start(image, run)
                run = []
        if run:
            self._start(image, run)

    def cached(self, image: ImageRef, index: int) -> bool:
        key = self.key(image, index)
        return key in self.memory or (self.disk is not None and key in self.disk)

    # ---- a run of blocks' journey ---------------------------------------------------
    def _start(self, image: ImageRef, run: list[int]) -> None:
        flights = {}
        for index in run:
            flights[index] = self._flights[self.key(image, index)] = _Flight()
        self.nursery.start_soon(self._fly, image, flights)

    async def _fly(self, image: ImageRef, flights: dict[int, _Flight]) -> None:
        """Fill the flights of a run of blocks; never raises (the nursery must live)."""
        try:
            if self.api.ranges_supported(self.ctx, image.id):
                found = await self._load_or_fetch(image, sorted(flights))
            else:
                found = {i: await self._from_stream(image, i) for i in sorted(flights)}
            for index, flight in flights.items():
                flight.data = found[index]
                self.memory.put(self.key(image, index), flight.data)
        except (ImagefsError, OSError) as exc:
            for flight in flights.values():
                flight.error = exc
        except Exception as exc:  # a bug: fail these blocks' readers, keep the mount
            log.exception("unexpected error fetching blocks %s of image %s", sorted(flights),
                          image.id)
            for flight in flights.values():
                flight.error = exc
        finally:
            for index, flight in flights.items():
                del self._flights[self.key(image, index)]
                flight.done.set()

    async def _load_or_fetch(self, image: ImageRef, run: list[int]) -> dict[int, bytes]:
        """The run's blocks from the disk tier, the rest in one ranged read."""
        bs, disk = self.block_size, self.disk
        on_disk = disk is not None and any(self.key(image, i) in disk for i in run)

        def work() -> tuple[dict[int, bytes], int, int]:  # in a worker thread
            found: dict[int, bytes] = {}
            if on_disk:
                for index in run:
                    data = disk.load(self.key(image, index))
                    if data is not None and len(data) == self.block_length(image, index):
                        found[index] = data
            hits = len(found)
            missing = [i for i in run if i not in found]
            if not missing:
                return found, hits, 0
            first, last = missing[0], missing[-1]
            want = min((last + 1) * bs, image.size) - first * bs
            data = self.api.read(self.ctx, image.id, first * bs, want)
            if len(data) != want:
                raise BackendUnavailable(f"image {image.id}: asked for {want} bytes at "
                                         f"{first * bs}, got {len(data)}")
            for index in range(first, last + 1):
                block = data[(index - first) * bs:(index - first + 1) * bs]
                if disk is not None:
                    disk.store(self.key(image, index), block)
                found[index] = block
            return found, hits, want

        found, hits, fetched = await trio.to_thread.run_sync(work, limiter=self.fetch_limiter,
                                                             abandon_on_cancel=True)
        self.stats["disk_hits"] += hits
        if fetched:
            self._count_fetch(fetched)
        return found

    def _count_fetch(self, n: int) -> None:
        self.stats["fetched_blocks"] += (n + self.block_size - 1) // self.block_size
        self.stats["fetched_bytes"] += n
        if self.on_fetch:
            self.on_fetch(n)

    # ---- stores without ranges ------------------------------------------------------
    async def _from_stream(self, image: ImageRef, index: int) -> bytes:
        streams = self._streams.setdefault(image.id, [])
        stream = next((s for s in streams if not s.finished and s.position <= index), None)
        if stream is None:
            stream = _Stream()
            streams.append(stream)
            log.info("image %s: filling blocks by streaming it from the start", image.id)
            self.nursery.start_soon(self._run_stream, image, stream)
        flight = stream.waiting.setdefault(index, _Flight())
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.data

    async def _run_stream(self, image: ImageRef, stream: _Stream) -> None:
        bs, disk = self.block_size, self.disk
        token = trio.lowlevel.current_trio_token()

        def deliver(index: int, data: bytes) -> None:  # on the trio thread
            stream.position = index + 1
            self.memory.put(self.key(image, index), data)
            self._count_fetch(len(data))
            flight = stream.waiting.pop(index, None)
            if flight is not None:
                flight.data = data
                flight.done.set()

        def pump() -> None:  # in a worker thread
            buf, index = bytearray(), 0
            for chunk in self.api.stream(self.ctx, image.id, 0):
                buf += chunk
                while len(buf) >= bs or (buf and index * bs + len(buf) >= image.size):
                    data = bytes(buf[:bs])
                    del buf[:bs]
                    if disk is not None:
                        disk.store(self.key(image, index), data)
                    trio.from_thread.run_sync(deliver, index, data, trio_token=token)
                    index += 1
            if index * bs < image.size:
                raise BackendUnavailable(f"image {image.id}: stream ended at block {index}")

        error: BaseException | None = None
        try:
            await trio.to_thread.run_sync(pump, limiter=self.fetch_limiter)
        except (ImagefsError, OSError) as exc:
            error = exc
        except Exception as exc:
            log.exception("unexpected error streaming image %s", image.id)
            error = exc
        finally:
            stream.finished = True
            self._streams[image.id].remove(stream)
            for flight in stream.waiting.values():
                flight.error = error or BackendUnavailable(
                    f"image {image.id}: stream ended before the block")
                flight.done.set()
