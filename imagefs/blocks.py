"""Blocks of image data: single-flight fetches, their dispatch and deadlines.

``BlockReader.read(image, offset, size)`` answers a read from blocks.  A
block comes from the memory tier, else the disk tier, else the image's
``Source``, in one of two ways:

- **a ranged read** of that one block (``_fetch``), retried with backoff
  (``imagefs.retry``) until its deadline;
- **a stream** (``imagefs.streams``) that is already coming that way: the
  prefetcher's streams ahead of sequential readers, or, for an image whose
  store refuses ranges, the image's one stream from the start.

One fetch per block however many readers want it: a **flight**.

Deadlines.  A read has one deadline, ``read_deadline`` after it arrived.  A
flight has the deadline of the read that started it, and is abandoned then:
its readers get ``BackendUnavailable`` (EIO), the thread of a stalled request
is left to end on its own timeout, and the next reader starts a new flight.
A reader that joined a flight and still has time when it fails starts a new
one.  A flight's failure also answers the readers of its block that arrive
within ``FAILURE_GRACE`` seconds after it: the kernel re-issues a failed
readahead at once as a synchronous read of the same page, which would
otherwise wait a second full deadline.

Direct sources (``rbd``, ``file``) bypass the image service and its checks:
once every block of an image has come from one, they are read back in order
and checked against the image's hash.  On a mismatch the image's cached
blocks are dropped, it is logged loudly, and the image is read through the
service from then on.

Stores that refuse ranges: the source raises ``RangesRefused``; this module
alone decides what follows.  The image is remembered, and its blocks come
from one stream from the start, which every reader waits for (a read ahead
of the stream waits for it to get there; a read behind it, of a block no
longer cached, waits for the next pass).

The disk tier never holds a stream up: a streamed block its writers have no
room for is kept in memory for them (``_defer``, ``_catch_up``), and a block
a page-cached reader got whole leaves the memory tier (``read``).

Concurrency: ``_flights``, ``_streams`` and the tiers' memory side are
touched on the trio thread only.  Worker threads run the blocking calls
(ranged reads at most ``fetch_threads`` at once; each stream in a thread of
its own) and hand blocks back with ``TrioToken.run_sync_soon``.  Between an
``await`` and the next line another task may have delivered the same block:
``_complete`` and ``_fail`` are idempotent for that reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable

import trio

from . import metrics
from .cache import BlockKey, TieredCache
from .errors import BackendUnavailable, ImagefsError, RangesRefused
from .retry import Backoff, RetryPolicy
from .sources import DIRECT_KINDS, GLANCE, Source
from .streams import Stream

log = logging.getLogger(__name__)

#: Seekable streams per image at once (several sequential readers at different places).
MAX_STREAMS = 4
#: A block this close past a stream's limit joins the stream rather than a ranged read.
STREAM_REACH = 2
#: Seconds a failed flight answers new readers of its block (see the docstring).
FAILURE_GRACE = 0.5
#: Seconds between two progress lines of a stream in the log.
PROGRESS_EVERY = 5.0
#: Blocks one ranged read of a warm-up asks for at most (one group file's).
WARM_RUN = 16
#: Seconds a warm-up waits, before its next read, while a reader's fetch waits for a thread.
WARM_YIELD = 0.002


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """What a reader needs of an image: fixed while a file is open."""
    id: str
    version: str
    size: int
    hash_algo: str | None = None   # what a whole read from a direct source is checked with
    hash_value: str | None = None


class _Flight:
    """One block on its way; readers wait on ``done``."""

    def __init__(self, key: BlockKey, deadline: float):
        self.key, self.deadline = key, deadline
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self.stream: Stream | None = None  # the stream it waits for, if any


class BlockReader:
    def __init__(self, open_source: Callable[[ImageRef, bool], Source], cache: TieredCache, *,
                 block_size: int, fetch_threads: int, read_deadline: float,
                 retry: RetryPolicy, nursery: trio.Nursery):
        self.open_source = open_source
        self.cache = cache
        self.block_size = block_size
        self.read_deadline = read_deadline
        self.retry = retry
        self.nursery = nursery
        self.fetch_limiter = trio.CapacityLimiter(fetch_threads)
        self._sources: dict[str, Source | trio.Event] = {}  # an Event while it opens
        self._flights: dict[BlockKey, _Flight] = {}
        self._failed: dict[BlockKey, tuple[float, BaseException]] = {}
        self._streams: dict[str, list[Stream]] = {}
        self._no_ranges: set[str] = set()
        self._direct_blocks: dict[str, set[int]] = {}  # blocks fetched from rbd or file
        self._distrusted: set[str] = set()  # images whose direct bytes failed their hash
        self.stats = {"fetched_blocks": 0, "fetched_bytes": 0, "disk_hits": 0,
                      "memory_hits": 0, "streams": 0, "retries": 0,
                      "disk_deferred": 0, "disk_missed": 0}
        # Streamed blocks the disk tier's writers had no room for, offered again from
        # the memory tier when they have caught up (``_catch_up``); True once a
        # page-cached reader has had the block whole (``read``).
        self._unwritten: dict[BlockKey, bool] = {}
        if cache.disk is not None:
            token = trio.lowlevel.current_trio_token()

            def drained() -> None:  # in a writer thread
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(self._catch_up)
            cache.disk.on_drained = drained
        self.fetched_by_image: dict[str, int] = {}  # bytes fetched from a source, per image

    def key(self, image: ImageRef, index: int) -> BlockKey:
        return BlockKey(image.id, image.version, self.block_size, index)

    def hold(self, image: ImageRef) -> None:
        """A ``data`` file of the image is open: the disk tier keeps its blocks while it
        can evict others (one ``unhold`` per ``hold``)."""
        self.cache.hold(self.key(image, 0))

    def unhold(self, image: ImageRef) -> None:
        self.cache.unhold(self.key(image, 0))

    def describe(self, image: ImageRef, record: dict) -> None:
        """The image's name and visibility, for the disk tier's index of what it holds."""
        self.cache.describe(self.key(image, 0), name=record.get("name"), size=image.size,
                            visibility=record.get("visibility"))

    def keep_last(self, image: ImageRef, indices) -> None:
        """Blocks of the image (a boot profile's) the disk tier evicts after its others."""
        self.cache.keep_last(self.key(image, 0), indices)

    def block_length(self, image: ImageRef, index: int) -> int:
        return max(0, min(self.block_size, image.size - index * self.block_size))

    def _blocks(self, image: ImageRef) -> int:
        return (image.size + self.block_size - 1) // self.block_size

    async def _source(self, image: ImageRef) -> Source:
        """The image's source, opened once (in a worker thread: it may ask the
        service for the image's locations, and connect to its store)."""
        while True:
            entry = self._sources.get(image.id)
            if isinstance(entry, trio.Event):
                await entry.wait()
                continue
            if entry is not None:
                return entry
            opened = self._sources[image.id] = trio.Event()
            try:
                source = await trio.to_thread.run_sync(
                    self.open_source, image, image.id not in self._distrusted,
                    abandon_on_cancel=True)
            except BaseException:
                del self._sources[image.id]
                raise
            finally:
                opened.set()
            self._sources[image.id] = source
            log.info("image %s: data from %s", image.id, self.path(image.id))
            return source

    def path(self, image_id: str) -> str | None:
        """Where the image's data comes from: ``rbd``, ``file``, ``glance-ranged``,
        ``glance-stream``, ``local``; None before its first fetch."""
        source = self._sources.get(image_id)
        if source is None or isinstance(source, trio.Event):
            return None
        if source.kind == GLANCE:
            return "glance-stream" if image_id in self._no_ranges else "glance-ranged"
        return source.kind

    def close(self) -> None:
        """Queue for the disk tier what it fell behind on and the memory tier still
        holds (waiting for room), and release every source (connections, open images)."""
        if self._unwritten:
            log.info("writing up to %.0f MiB of streamed blocks to the disk cache before exit",
                     len(self._unwritten) * self.block_size / 2**20)
            self._catch_up(wait=True)
        if self.stats["disk_missed"]:
            log.info("the disk cache fell behind the network on %d streamed blocks (%.0f MiB) "
                     "and did not write them: a later read fetches them again",
                     self.stats["disk_missed"], self.stats["disk_missed"] * self.block_size / 2**20)
        for source in self._sources.values():
            if not isinstance(source, trio.Event):
                source.close()
        self._sources.clear()

    @property
    def unwritten_blocks(self) -> int:
        """Streamed blocks the disk tier is behind on (``_catch_up`` offers them again)."""
        return len(self._unwritten)

    def _defer(self, key: BlockKey) -> None:
        """A streamed block the disk tier had no room for: remembered, and kept in the
        memory tier for the writers, at most half the tier's worth of them (an
        older one is then given up: without it, a cold whole-image read the
        writers could not keep up with filled the tier with blocks already
        served, peak RSS 375 MiB)."""
        self.stats["disk_deferred"] += 1
        self._unwritten[key] = False
        if len(self._unwritten) > self.cache.memory.max_bytes // 2 // self.block_size:
            oldest = next(iter(self._unwritten))
            if self._unwritten.pop(oldest):  # and a page-cached reader has had it
                self.cache.memory.discard(oldest)
            self.stats["disk_missed"] += 1

    def _catch_up(self, wait: bool = False) -> None:
        """On the trio thread, once the disk tier's writers have emptied their queue:
        offer them again the streamed blocks they had no room for, from the memory
        tier, until their queue is full again (``wait``: all of them, waiting for
        room).  A block the memory tier has evicted since is not on disk: a later
        read fetches it again."""
        while self._unwritten:
            key = next(iter(self._unwritten))
            data = self.cache.memory.peek(key)
            if data is not None and not self.cache.store_later(key, data, wait=wait):
                return
            if self._unwritten.pop(key):  # served: the page cache has it, the disk soon
                self.cache.memory.discard(key)
            if data is None:
                self.stats["disk_missed"] += 1

    def _late(self, image: ImageRef) -> BackendUnavailable:
        return BackendUnavailable(f"image {image.id}: no data within {self.read_deadline:g}s")

    # ---- reading --------------------------------------------------------------
    async def read(self, image: ImageRef, offset: int, size: int, *,
                   paged: bool = False) -> bytes:
        """Bytes ``[offset, offset+size)`` of the image, short only at its end.

        ``paged``: the reader's kernel keeps what it is given in its page cache
        (a file not opened ``O_DIRECT``).  A block given whole to such a reader
        then leaves the memory tier, unless the disk tier is still behind on it:
        the page cache is its memory tier from then on, the disk tier (if any)
        the next.  A whole-image read so reuses a few blocks' worth of memory
        rather than filling the tier with fresh pages (cold 1 GiB: 29,000 page
        faults and 142 MiB peak RSS, against 80,000 and 343 MiB).

        Raises ``BackendUnavailable`` if the blocks do not come within
        ``read_deadline`` seconds, or the error that ended their fetch.
        """
        end = min(offset + size, image.size)
        if offset >= end:
            return b""
        bs = self.block_size
        deadline = trio.current_time() + self.read_deadline
        indexes = range(offset // bs, (end - 1) // bs + 1)
        # Every missing block's flight starts before waiting on any of them.
        wanted: list[bytes | _Flight] = []
        for index in indexes:
            data = self.cache.get(self.key(image, index))
            if data is not None:
                self.stats["memory_hits"] += 1
                wanted.append(data)
            else:
                wanted.append(self._flight(image, index, deadline))
        parts = []
        for index, item in zip(indexes, wanted):
            data = item if isinstance(item, bytes) else \
                await self._wait(image, index, item, deadline)
            part = data[max(offset - index * bs, 0):end - index * bs]
            parts.append(part)
            if paged and part is data:
                key = self.key(image, index)
                if key in self._unwritten:
                    self._unwritten[key] = True  # leaves once written or given up
                else:
                    self.cache.memory.discard(key)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _flight(self, image: ImageRef, index: int, deadline: float) -> _Flight:
        """The block's flight: the one under way, else a new one.  Raises the
        error of one that failed less than ``FAILURE_GRACE`` seconds ago."""
        key = self.key(image, index)
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        failed = self._failed.get(key)
        if failed is not None:
            if trio.current_time() - failed[0] < FAILURE_GRACE:
                raise failed[1]
            del self._failed[key]
        return self._start(image, index, deadline)

    async def _wait(self, image: ImageRef, index: int, flight: _Flight,
                    deadline: float) -> bytes:
        """The block, once ``flight`` (or a later one, while time is left) has it."""
        while True:
            with trio.move_on_at(deadline):
                await flight.done.wait()
            if not flight.done.is_set():
                if trio.current_time() >= flight.deadline:
                    self._fail(flight, self._late(image))
                raise self._late(image)
            if flight.error is None:
                return flight.data
            if not isinstance(flight.error, BackendUnavailable) or flight.deadline >= deadline:
                raise flight.error  # final, or this reader's own flight gave up
            # A flight started by an earlier reader gave up; this reader has time left.
            data = self.cache.get(flight.key)
            if data is not None:
                return data
            flight = self._flights.get(flight.key) or self._start(image, index, deadline)

    def _start(self, image: ImageRef, index: int, deadline: float) -> _Flight:
        key = self.key(image, index)
        flight = self._flights[key] = _Flight(key, deadline)
        self._dispatch(image, index, flight)
        return flight

    def _dispatch(self, image: ImageRef, index: int, flight: _Flight) -> None:
        """Send ``flight`` the cheapest way: memory (it may have come meanwhile), disk,
        a stream coming anyway, a ranged read."""
        data = self.cache.get(flight.key)
        if data is not None:
            self._complete(flight, data)
        elif self.cache.on_disk(flight.key):
            self.nursery.start_soon(self._fetch, image, index, flight)
        elif image.id in self._no_ranges:
            self._wait_for_stream_from_start(image, index, flight)
        elif (stream := self._stream_near(image, index)) is not None:
            stream.extend(index + 1)
            self._attach(stream, index, flight)
        else:
            self.nursery.start_soon(self._fetch, image, index, flight)

    def _wait_for_stream_from_start(self, image: ImageRef, index: int, flight: _Flight) -> None:
        data = self.cache.get(flight.key)  # it may have gone by meanwhile
        if data is not None:
            self._complete(flight, data)
        else:
            self._attach(self._stream_from_start(image), index, flight)

    @staticmethod
    def _attach(stream: Stream, index: int, flight: _Flight) -> None:
        stream.waiting[index] = flight
        flight.stream = stream

    def _complete(self, flight: _Flight, data: bytes) -> None:
        if flight.done.is_set():
            return
        flight.data = data
        self._settle(flight)

    def _fail(self, flight: _Flight, error: BaseException, remember: bool = True) -> None:
        """Fail the flight's readers; ``remember``: and readers of its block for
        ``FAILURE_GRACE`` (not for a warm-up's: a reader then tries for itself)."""
        if flight.done.is_set():
            return
        flight.error = error
        self._settle(flight)
        if not remember:
            return
        now = trio.current_time()
        if len(self._failed) > 1024:
            self._failed = {k: v for k, v in self._failed.items()
                            if now - v[0] < FAILURE_GRACE}
        self._failed[flight.key] = (now, error)

    def _settle(self, flight: _Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        stream = flight.stream
        if stream is not None and stream.waiting.get(flight.key.index) is flight:
            del stream.waiting[flight.key.index]
        flight.stream = None
        flight.done.set()

    # ---- prefetching ------------------------------------------------------------
    def is_cached(self, image: ImageRef, offset: int, size: int) -> bool:
        """Whether every block of the range is cached or on its way."""
        bs = self.block_size
        end = min(offset + size, image.size)
        for index in range(offset // bs, (end - 1) // bs + 1):
            key = self.key(image, index)
            if not (self.cache.in_memory(key) or key in self._flights
                    or self.cache.on_disk(key)):
                return False
        return True

    def prefetch(self, image: ImageRef, start: int, end: int, cached_only: bool = False) -> None:
        """Bring ``[start, end)`` in ahead of a sequential reader: disk runs loaded,
        and one stream (one that is there or nearly there goes further); with
        ``cached_only``, only the disk runs."""
        end = min(end, image.size)
        if start >= end:
            return
        first = start // self.block_size
        limit = (end - 1) // self.block_size + 1
        while first < limit:
            key = self.key(image, first)
            if self.cache.in_memory(key) or key in self._flights:
                first += 1
            elif self.cache.on_disk(key):
                first += self._load_disk_run(image, first, limit)
            elif cached_only:
                first += 1
            elif image.id in self._no_ranges:
                self._stream_from_start(image)  # it reads to the end anyway
                return
            else:
                stream = self._stream_near(image, first)
                if stream is not None:
                    stream.extend(limit)
                else:
                    self._open_stream(image, first, limit, seekable=True)
                return

    def _load_disk_run(self, image: ImageRef, first: int, limit: int) -> int:
        """Start loading the disk-cached blocks from ``first`` on (before ``limit``,
        in one group file) with one read; returns how many."""
        deadline = trio.current_time() + self.read_deadline
        flights = []
        index = first
        while index < limit:
            key = self.key(image, index)
            if flights and not self.cache.same_run(flights[0].key, key):
                break
            if self.cache.in_memory(key) or key in self._flights or not self.cache.on_disk(key):
                break
            flight = self._flights[key] = _Flight(key, deadline)
            flights.append(flight)
            index += 1
        self.nursery.start_soon(self._load_run, image, first, flights)
        return len(flights)

    async def _load_run(self, image: ImageRef, first: int, flights: list[_Flight]) -> None:
        """Fill ``flights`` (blocks ``first``...) from the disk tier, each as soon as
        it is read; a block that is not there after all is dispatched anew."""
        token = trio.lowlevel.current_trio_token()
        done = [False] * len(flights)

        def deliver(i: int, data: bytes | None) -> None:  # on the trio thread
            done[i] = True
            index, flight = first + i, flights[i]
            if data is not None and len(data) == self.block_length(image, index):
                self.stats["disk_hits"] += 1
                self.cache.put(flight.key, data)
                self._complete(flight, data)
            elif not flight.done.is_set():
                self.nursery.start_soon(self._fetch, image, index, flight, False)

        def work() -> None:  # in a worker thread
            for i, data in enumerate(self.cache.load_run([f.key for f in flights])):
                token.run_sync_soon(deliver, i, data)

        try:
            await trio.to_thread.run_sync(work, limiter=self.fetch_limiter,
                                          abandon_on_cancel=True)
        except Exception:  # the disk tier turns OSErrors into misses: this is a bug
            log.exception("unexpected error loading blocks of image %s from disk", image.id)
        # Deliveries queued before the thread returned have run by now.
        for i in range(len(flights)):
            if not done[i]:
                deliver(i, None)

    # ---- one block by a ranged read ---------------------------------------------------
    async def _fetch(self, image: ImageRef, index: int, flight: _Flight,
                     disk: bool = True) -> None:
        """Fill ``flight`` from the disk tier or ranged reads, until its deadline."""
        try:
            with trio.move_on_at(flight.deadline):
                data = await self._fetch_block(image, index, flight, disk)
                if data is not None:
                    self._complete(flight, data)
                return
            self._fail(flight, self._late(image))
        except ImagefsError as exc:
            self._fail(flight, exc)
        except Exception as exc:  # a bug: fail this block's readers, keep the mount
            log.exception("unexpected error fetching block %d of image %s", index, image.id)
            self._fail(flight, BackendUnavailable(f"image {image.id}: {exc!r}"))

    async def _fetch_block(self, image: ImageRef, index: int, flight: _Flight,
                           disk: bool) -> bytes | None:
        """The block's bytes, or None when it was handed to a stream."""
        key, want = flight.key, self.block_length(image, index)
        if disk and self.cache.on_disk(key):
            data = await trio.to_thread.run_sync(self.cache.load, key,
                                                 limiter=self.fetch_limiter,
                                                 abandon_on_cancel=True)
            if data is not None and len(data) == want:
                self.stats["disk_hits"] += 1
                self.cache.put(key, data)
                return data
        if image.id in self._no_ranges:
            self._wait_for_stream_from_start(image, index, flight)
            return None
        source = await self._source(image)
        backoff = Backoff(self.retry, flight.deadline, clock=trio.current_time)

        def work(timeout: float) -> bytes:  # in a worker thread
            data = source.read(index * self.block_size, want, timeout=timeout)
            if len(data) != want:
                raise BackendUnavailable(f"image {image.id}: block {index} came back with "
                                         f"{len(data)} bytes, expected {want}")
            self.cache.store(key, data)
            return data

        while True:
            try:
                timeout = max(0.1, flight.deadline - trio.current_time())
                began = time.monotonic()
                data = await trio.to_thread.run_sync(work, timeout, limiter=self.fetch_limiter,
                                                     abandon_on_cancel=True)
                if metrics.FETCH_SECONDS is not None:
                    metrics.FETCH_SECONDS.observe(time.monotonic() - began)
            except RangesRefused:
                self._note_no_ranges(image)
                self._wait_for_stream_from_start(image, index, flight)
                return None
            except BackendUnavailable as exc:
                delay = backoff.next_delay()
                if delay is None:
                    raise
                self.stats["retries"] += 1
                log.info("image %s: block %d: %s; trying again in %.2fs", image.id, index,
                         exc, delay)
                await trio.sleep(delay)
                continue
            self._count(image, data)
            self.cache.put(key, data)
            self._note_fetched(image, index, source.kind)
            return data

    # ---- warming: boot profiles, ``imagefs prefetch`` ------------------------------------
    async def warm(self, image: ImageRef, ranges, progress: Callable[[dict], None] | None = None,
                   *, in_memory: bool = False) -> dict:
        """Bring the blocks of ``ranges`` (byte ranges ``(start, end)``, in the order
        given) into the cache ahead of any reader: ranged reads of up to ``WARM_RUN``
        consecutive blocks, half the fetch threads' worth at once, each started only while no
        reader's fetch is waiting for a thread.  Blocks cached or on their way cost
        nothing.  The blocks go to the disk tier, and with ``in_memory`` (a boot
        profile's, which a boot is about to read) to the memory tier too: a boot that
        found its blocks only on disk took 33 s against 27 s, waiting on reads from
        the cache's disk.  Returns (and passes ``progress`` after each run) the figures
        so far: ``blocks`` and ``bytes`` to warm, ``done`` blocks, ``cached`` blocks
        that were there already, ``fetched`` bytes, ``failed`` blocks."""
        order: dict[int, None] = {}
        for start, end in ranges:
            start, end = max(0, start), min(end, image.size)
            for index in range(start // self.block_size, (end - 1) // self.block_size + 1):
                if start < end:
                    order.setdefault(index)
        runs: list[list[int]] = []
        for index in order:
            run = runs[-1] if runs else None
            if run and index == run[-1] + 1 and len(run) < WARM_RUN \
                    and self.cache.same_run(self.key(image, run[0]), self.key(image, index)):
                run.append(index)
            else:
                runs.append([index])
        figures = {"blocks": len(order), "bytes": sum(self.block_length(image, i) for i in order),
                   "done": 0, "cached": 0, "fetched": 0, "failed": 0}
        slots = trio.Semaphore(max(1, int(self.fetch_limiter.total_tokens) // 2))

        async def one(run: list[int]) -> None:
            try:
                await self._warm_run(image, run, figures, in_memory)
            finally:
                slots.release()
                figures["done"] += len(run)
                if progress is not None:
                    progress(dict(figures))

        async with trio.open_nursery() as nursery:
            for run in runs:
                await slots.acquire()
                nursery.start_soon(one, run)
        return figures

    async def _warm_run(self, image: ImageRef, run: list[int], figures: dict,
                        in_memory: bool) -> None:
        todo = []
        for index in run:
            key = self.key(image, index)
            if self.cache.in_memory(key) or self.cache.on_disk(key) or key in self._flights:
                figures["cached"] += 1
            else:
                todo.append(index)
        while todo:  # consecutive pieces of what is missing
            piece = [todo.pop(0)]
            while todo and todo[0] == piece[-1] + 1:
                piece.append(todo.pop(0))
            deadline = trio.current_time() + self.read_deadline
            flights = []
            for index in piece:
                key = self.key(image, index)
                flight = self._flights[key] = _Flight(key, deadline)
                flights.append(flight)
            fetched = await self._fetch_range(image, piece[0], flights, in_memory)
            figures["fetched"] += fetched
            figures["failed"] += sum(1 for f in flights if f.error is not None)

    async def _fetch_range(self, image: ImageRef, first: int, flights: list[_Flight],
                           in_memory: bool) -> int:
        """Fill ``flights`` (blocks ``first``... of one group file) with one ranged
        read, retried until their deadline, after any reader's fetch; the bytes
        fetched.  The blocks go to the disk tier with one write."""
        bs = self.block_size
        want = sum(self.block_length(image, f.key.index) for f in flights)
        deadline = flights[0].deadline
        store = self.cache.disk is not None

        def work(source: Source, timeout: float) -> list[bytes]:  # in a worker thread
            data = source.read(first * bs, want, timeout=timeout)
            if len(data) != want:
                raise BackendUnavailable(f"image {image.id}: blocks {first}+{len(flights)} "
                                         f"came back with {len(data)} bytes, expected {want}")
            pieces = [data[i * bs:(i + 1) * bs] for i in range(len(flights))]
            if store:
                self.cache.store_run([(f.key, piece) for f, piece in zip(flights, pieces)])
            return pieces

        try:
            with trio.move_on_at(deadline):
                source = await self._source(image)
                backoff = Backoff(self.retry, deadline, clock=trio.current_time)
                while True:
                    while self.fetch_limiter.statistics().tasks_waiting:  # readers first
                        await trio.sleep(WARM_YIELD)
                    try:
                        pieces = await trio.to_thread.run_sync(
                            work, source, max(0.1, deadline - trio.current_time()),
                            limiter=self.fetch_limiter, abandon_on_cancel=True)
                        break
                    except RangesRefused:
                        self._note_no_ranges(image)
                        for flight in flights:
                            self._wait_for_stream_from_start(image, flight.key.index, flight)
                        return 0
                    except BackendUnavailable:
                        delay = backoff.next_delay()
                        if delay is None:
                            raise
                        self.stats["retries"] += 1
                        await trio.sleep(delay)
                for flight, piece in zip(flights, pieces):
                    self._count(image, piece)
                    if not store or in_memory:
                        self.cache.put(flight.key, piece)
                    self._complete(flight, piece)
                    self._note_fetched(image, flight.key.index, source.kind)
                return want
            error: BaseException = self._late(image)
        except ImagefsError as exc:
            error = exc
        except Exception as exc:  # a bug: fail these blocks' readers, keep the mount
            log.exception("unexpected error warming blocks of image %s", image.id)
            error = BackendUnavailable(f"image {image.id}: {exc!r}")
        log.info("image %s: warming blocks %d-%d failed: %s", image.id, first,
                 first + len(flights) - 1, error)
        for flight in flights:
            self._fail(flight, error, remember=False)
        return 0

    # ---- checking what a direct source sent -----------------------------------------
    def _note_fetched(self, image: ImageRef, index: int, kind: str) -> None:
        """Once every block of an image came from a direct source, check them all
        against the image's hash (Glance checks its own bytes; these bypass it)."""
        if kind not in DIRECT_KINDS or not image.hash_algo:
            return
        done = self._direct_blocks.setdefault(image.id, set())
        done.add(index)
        if len(done) == self._blocks(image):
            del self._direct_blocks[image.id]
            self.nursery.start_soon(self._verify, image, kind)

    async def _verify(self, image: ImageRef, kind: str) -> None:
        try:
            digest = hashlib.new(image.hash_algo)
        except ValueError:
            log.info("image %s: cannot check its bytes (unknown hash %s)", image.id,
                     image.hash_algo)
            return
        for index in range(self._blocks(image)):
            key = self.key(image, index)
            data = self.cache.get(key)
            if data is None:
                data = await trio.to_thread.run_sync(self.cache.load, key)
            if data is None or len(data) != self.block_length(image, index):
                log.info("image %s: not checked against its %s: block %d is no longer "
                         "cached", image.id, image.hash_algo, index)
                return
            await trio.to_thread.run_sync(digest.update, data)
        if digest.hexdigest() == image.hash_value:
            log.info("image %s: all %d bytes read from %s match its %s", image.id,
                     image.size, kind, image.hash_algo)
            return
        log.error("image %s: THE BYTES READ FROM %s DO NOT MATCH ITS %s (%s, expected %s); "
                  "dropping its cached blocks and reading it through the image service "
                  "from now on", image.id, kind.upper(), image.hash_algo.upper(),
                  digest.hexdigest(), image.hash_value)
        self._distrusted.add(image.id)
        source = self._sources.pop(image.id, None)
        if source is not None and not isinstance(source, trio.Event):
            source.close()
        self.cache.discard_from_memory(image.id)
        await trio.to_thread.run_sync(self.cache.discard_image, self.key(image, 0))

    def streams_open(self) -> int:
        return sum(len(streams) for streams in self._streams.values())

    def _count(self, image: ImageRef, data: bytes) -> None:
        self.stats["fetched_blocks"] += 1
        self.stats["fetched_bytes"] += len(data)
        self.fetched_by_image[image.id] = self.fetched_by_image.get(image.id, 0) + len(data)

    def _note_no_ranges(self, image: ImageRef) -> None:
        if image.id not in self._no_ranges:
            log.warning("image %s: its store refuses Range requests; reading it with one "
                        "stream from the start, which every reader waits for "
                        "(glance-stream)", image.id)
            self._no_ranges.add(image.id)

    # ---- streams ----------------------------------------------------------------------
    def _stream_near(self, image: ImageRef, index: int) -> Stream | None:
        """A seekable stream that will fetch block ``index`` anyway, else one that
        nearly reaches it (extending another would fetch the block twice)."""
        near = [s for s in self._streams.get(image.id, ())
                if s.seekable and s.near(index, STREAM_REACH)]
        return next((s for s in near if index < s.limit), near[0] if near else None)

    def _stream_from_start(self, image: ImageRef) -> Stream:
        """The image's stream from the start: the one running, else a new one."""
        stream = next((s for s in self._streams.get(image.id, ())
                       if not s.seekable and not s.closed), None)
        return stream or self._open_stream(image, 0, None, seekable=False)

    def _open_stream(self, image: ImageRef, start: int, limit: int | None,
                     seekable: bool) -> Stream:
        streams = self._streams.setdefault(image.id, [])
        if seekable:
            running = [s for s in streams if s.seekable and not s.closed]
            if len(running) >= MAX_STREAMS:
                running[0].close()
        stream = Stream(None, start=start, limit=limit,
                        blocks=self._blocks(image), block_size=self.block_size,
                        size=image.size, seekable=seekable)
        streams.append(stream)
        self.stats["streams"] += 1
        log.debug("image %s: %s", image.id, stream)
        self.nursery.start_soon(self._run_stream, image, stream)
        return stream

    async def _run_stream(self, image: ImageRef, stream: Stream) -> None:
        token = trio.lowlevel.current_trio_token()
        began = logged = trio.current_time()
        first = stream.position

        def deliver(index: int, data: bytes, queued: bool) -> None:  # on the trio thread;
            nonlocal logged                                            # must not raise
            stream.position = index + 1
            now = trio.current_time()
            if now - logged >= PROGRESS_EVERY:  # long work says how far it is, now and then
                logged = now
                mib = self.block_size / 2**20
                log.info("image %s: streaming, at %.0f of %.0f MiB (%.0f MiB/s)", image.id,
                         stream.position * mib, image.size / 2**20,
                         (stream.position - first) * mib / max(now - began, 1e-3))
            key = self.key(image, index)
            self.cache.put(key, data)
            if not queued:
                self._defer(key)
            self._count(image, data)
            flight = stream.waiting.get(index) or self._flights.get(key)
            if flight is not None:
                self._complete(flight, data)
            self._note_fetched(image, index, stream.source.kind)

        def handover(index: int, data: bytes) -> None:  # in the pump thread
            queued = self.cache.store_later(self.key(image, index), data)  # never waits
            token.run_sync_soon(deliver, index, data, queued)  # in order, without waiting

        error: BaseException | None = None
        backoff: Backoff | None = None
        try:
            stream.source = await self._source(image)
            while True:
                try:
                    await trio.to_thread.run_sync(stream.pump, stream.position, handover,
                                                  abandon_on_cancel=True)
                    break
                except RangesRefused:
                    self._note_no_ranges(image)
                    break
                except BackendUnavailable as exc:
                    # Deliveries queued before the thread gave up have run: position is current.
                    waiting = [f.deadline for f in stream.waiting.values()]
                    if stream.seekable or not waiting:
                        log.info("image %s: stream at block %d failed: %s", image.id,
                                 stream.position, exc)
                        error = exc
                        break
                    if backoff is None:
                        backoff = Backoff(self.retry, max(waiting), clock=trio.current_time)
                    backoff.deadline = max(waiting)
                    delay = backoff.next_delay()
                    if delay is None:
                        error = exc
                        break
                    self.stats["retries"] += 1
                    log.info("image %s: stream at block %d failed: %s; resuming in %.2fs",
                             image.id, stream.position, exc, delay)
                    await trio.sleep(delay)
        except ImagefsError as exc:
            error = exc
        except trio.Cancelled:
            stream.close()
            raise
        except Exception as exc:
            log.exception("unexpected error streaming image %s", image.id)
            error = BackendUnavailable(f"image {image.id}: {exc!r}")
        finally:
            stream.close()
            streams = self._streams.get(image.id, [])
            if stream in streams:
                streams.remove(stream)
            if not streams:
                self._streams.pop(image.id, None)
        # Readers still waiting: a seekable stream's go to ranged reads, which retry on
        # their own; a stream from the start has retried for them already.
        retry_elsewhere = error is None or (stream.seekable and
                                            isinstance(error, BackendUnavailable))
        for index, flight in list(stream.waiting.items()):
            del stream.waiting[index]
            flight.stream = None
            if flight.done.is_set():
                continue
            if retry_elsewhere:
                self._dispatch(image, index, flight)
            else:
                self._fail(flight, error)
