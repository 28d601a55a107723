"""Runs of blocks: ranged reads, warm-ups, and runs loaded from the disk tier.

``Runs.ranged`` is the one ranged read of the data path: consecutive blocks
of an image by one request, retried with backoff (``imagefs.retry``) until
the first block's deadline.  A reader's single block goes through it, and so
does a warm-up's run.  When the store refuses ranges (``RangesRefused``) it
is decided here, once: the image is marked (``ImageState.refuse_ranges``) and
the blocks wait for its stream from the start.

``Runs.warm`` brings byte ranges of an image (a boot profile's, or the
whole image for ``imagefs prefetch``) into the cache ahead of any reader:
ranged reads of up to ``WARM_RUN`` consecutive blocks (one group file's),
each started only while no reader's fetch waits for a thread.

``Runs.load_from_disk`` starts loading consecutive disk-cached blocks with
one read of their group file, ahead of a sequential reader.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio

from . import metrics
from .cache import TieredCache
from .errors import BackendUnavailable, ImagefsError, RangesRefused
from .flights import Flight, Flights
from .image import ImageState
from .retry import AsyncRetrier, RetryPolicy

log = logging.getLogger(__name__)

#: Blocks one ranged read of a warm-up asks for at most (one group file's).
WARM_RUN = 16
#: Seconds a warm-up waits, before its next read, while a reader's fetch waits for a thread.
WARM_YIELD = 0.002


class Runs:
    def __init__(self, cache: TieredCache, flights: Flights, *, limiter: trio.CapacityLimiter,
                 retry: RetryPolicy, read_deadline: float, stats: dict, nursery: trio.Nursery,
                 fetch: Callable[[ImageState, int, Flight, bool], Awaitable[None]]):
        self.cache, self.flights, self.limiter = cache, flights, limiter
        self.retry, self.read_deadline, self.stats = retry, read_deadline, stats
        self.nursery = nursery
        self.fetch = fetch  # a block the disk tier did not have after all: fetched anew

    # ---- the ranged read ------------------------------------------------------------------
    async def ranged(self, image: ImageState, first: int, flights: list[Flight], *,
                     warm: bool = False) -> list[bytes] | None:
        """The blocks of ``flights`` (``first``, ``first+1``...) by one ranged read,
        retried until the first flight's deadline, stored in the disk tier (with one
        write).  ``warm``: each try waits until no reader's fetch waits for a thread.
        None if the store refuses ranges: the flights then wait for the image's
        stream from the start."""
        bs, cache = image.block_size, self.cache
        want = sum(image.block_length(f.key.index) for f in flights)
        source = await image.source()

        def work(timeout: float) -> list[bytes]:  # in a worker thread
            data = source.read(first * bs, want, timeout=timeout)
            if len(data) != want:
                what = f"block {first}" if len(flights) == 1 else \
                    f"blocks {first}+{len(flights)}"
                raise BackendUnavailable(f"image {image.ref.id}: {what} came back with "
                                         f"{len(data)} bytes, expected {want}")
            if len(flights) == 1:
                cache.store(flights[0].key, data)
                return [data]
            pieces = [data[i * bs:(i + 1) * bs] for i in range(len(flights))]
            cache.store_run([(f.key, piece) for f, piece in zip(flights, pieces)])
            return pieces

        async def one_try() -> list[bytes]:
            while warm and self.limiter.statistics().tasks_waiting:  # readers first
                await trio.sleep(WARM_YIELD)
            began = time.monotonic()
            pieces = await trio.to_thread.run_sync(
                work, max(0.1, flights[0].deadline - trio.current_time()),
                limiter=self.limiter, abandon_on_cancel=True)
            if not warm and metrics.FETCH_SECONDS is not None:
                metrics.FETCH_SECONDS.observe(time.monotonic() - began)
            return pieces

        def on_retry(exc: BaseException, delay: float) -> None:
            self.stats["retries"] += 1
            if not warm:
                log.info("image %s: block %d: %s; trying again in %.2fs", image.ref.id, first,
                         exc, delay)

        try:
            return await AsyncRetrier(self.retry, deadline=flights[0].deadline,
                                      on_retry=on_retry)(one_try)
        except RangesRefused:
            image.refuse_ranges()
            for flight in flights:
                image.streams.wait_from_start(flight.key.index, flight)
            return None

    # ---- warm-ups: boot profiles, ``imagefs prefetch`` ------------------------------------
    async def warm(self, image: ImageState, ranges, progress: Callable[[dict], None] | None,
                   in_memory: bool) -> dict:
        """Bring the blocks of ``ranges`` (byte ranges ``(start, end)``, in the order
        given) into the cache ahead of any reader, ranged reads of up to ``WARM_RUN``
        consecutive blocks, half as many at once as there are fetch threads.  Blocks
        cached or on their way cost nothing.  The blocks go to the disk tier, and
        with ``in_memory`` (a boot profile's, which a boot is about to read) to the
        memory tier too: a boot that finds its blocks only on disk waits on reads
        from the cache's disk.  Returns (and passes ``progress`` after each run) the
        figures so far: ``blocks`` and ``bytes`` to warm, ``done`` blocks, ``cached``
        blocks that were there already, ``fetched`` bytes, ``failed`` blocks."""
        order: dict[int, None] = {}
        for start, end in ranges:
            for index in image.indexes(start, end):
                order.setdefault(index)
        runs: list[list[int]] = []
        for index in order:
            run = runs[-1] if runs else None
            if run and index == run[-1] + 1 and len(run) < WARM_RUN \
                    and self.cache.same_run(image.key(run[0]), image.key(index)):
                run.append(index)
            else:
                runs.append([index])
        figures = {"blocks": len(order), "bytes": sum(image.block_length(i) for i in order),
                   "done": 0, "cached": 0, "fetched": 0, "failed": 0}
        slots = trio.Semaphore(max(1, int(self.limiter.total_tokens) // 2))

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

    async def _warm_run(self, image: ImageState, run: list[int], figures: dict,
                        in_memory: bool) -> None:
        todo = []
        for index in run:
            key = image.key(index)
            if self.cache.in_memory(key) or self.cache.on_disk(key) or key in self.flights:
                figures["cached"] += 1
            else:
                todo.append(index)
        while todo:  # consecutive pieces of what is missing
            piece = [todo.pop(0)]
            while todo and todo[0] == piece[-1] + 1:
                piece.append(todo.pop(0))
            deadline = trio.current_time() + self.read_deadline
            flights = [self.flights.new(image.key(index), deadline) for index in piece]
            fetched = await self._fetch_range(image, piece[0], flights, in_memory)
            figures["fetched"] += fetched  # (not ``+= await``: other runs add meanwhile)
            figures["failed"] += sum(1 for f in flights if f.error is not None)

    async def _fetch_range(self, image: ImageState, first: int, flights: list[Flight],
                           in_memory: bool) -> int:
        """Fill ``flights`` (blocks ``first``... of one group file) with one ranged
        read after any reader's fetch; the bytes fetched."""
        try:
            with trio.move_on_at(flights[0].deadline):
                pieces = await self.ranged(image, first, flights, warm=True)
                if pieces is None:
                    return 0
                for flight, piece in zip(flights, pieces):
                    image.count(piece)
                    if self.cache.disk is None or in_memory:
                        self.cache.put(flight.key, piece)
                    self.flights.complete(flight, piece)
                return sum(len(piece) for piece in pieces)
            error: BaseException = BackendUnavailable(
                f"image {image.ref.id}: no data within {self.read_deadline:g}s")
        except ImagefsError as exc:
            error = exc
        except Exception as exc:  # a bug: fail these blocks' readers, keep the mount
            log.exception("unexpected error warming blocks of image %s", image.ref.id)
            error = BackendUnavailable(f"image {image.ref.id}: {exc!r}")
        log.info("image %s: warming blocks %d-%d failed: %s", image.ref.id, first,
                 first + len(flights) - 1, error)
        for flight in flights:
            self.flights.fail(flight, error, remember=False)
        return 0

    # ---- runs loaded from the disk tier -------------------------------------------------
    def load_from_disk(self, image: ImageState, first: int, limit: int) -> int:
        """Start loading the disk-cached blocks from ``first`` on (before ``limit``,
        in one group file) with one read; returns how many."""
        deadline = trio.current_time() + self.read_deadline
        flights: list[Flight] = []
        for index in range(first, limit):
            key = image.key(index)
            if flights and not self.cache.same_run(flights[0].key, key):
                break
            if self.cache.in_memory(key) or key in self.flights or not self.cache.on_disk(key):
                break
            flights.append(self.flights.new(key, deadline))
        self.nursery.start_soon(self._load_run, image, first, flights)
        return len(flights)

    async def _load_run(self, image: ImageState, first: int, flights: list[Flight]) -> None:
        """Fill ``flights`` (blocks ``first``...) from the disk tier, each as soon as
        it is read; a block that is not there after all is fetched anew."""
        token = trio.lowlevel.current_trio_token()
        done = [False] * len(flights)

        def deliver(i: int, data: bytes | None) -> None:  # on the trio thread
            done[i] = True
            index, flight = first + i, flights[i]
            if data is not None and len(data) == image.block_length(index):
                self.stats["disk_hits"] += 1
                self.cache.put(flight.key, data)
                self.flights.complete(flight, data)
            elif not flight.done.is_set():
                self.nursery.start_soon(self.fetch, image, index, flight, False)

        def work() -> None:  # in a worker thread
            for i, data in enumerate(self.cache.load_run([f.key for f in flights])):
                token.run_sync_soon(deliver, i, data)

        try:
            await trio.to_thread.run_sync(work, limiter=self.limiter, abandon_on_cancel=True)
        except Exception:  # the disk tier turns OSErrors into misses: this is a bug
            log.exception("unexpected error loading blocks of image %s from disk", image.ref.id)
        # Deliveries queued before the thread returned have run by now.
        for i in range(len(flights)):
            if not done[i]:
                deliver(i, None)
