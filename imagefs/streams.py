"""Streams: blocks of one image read in long requests, as they arrive.

A ``Stream`` fetches blocks ``position, position+1, ...`` of one image in a
thread of its own (``pump``) and hands each over as soon as it is complete.
It serves readers that are coming: a sequential reader's prefetch window,
or every reader of an image whose store cannot seek.  One long response is
much cheaper than many ranged reads: each request costs the service CPU
whatever its size.

Two kinds:

- **seekable** (the store takes ranges): the stream may fetch blocks below
  its ``limit``, which the reader's prefetcher raises as it advances.  Each
  request is a closed range, never an open-ended body.  Where a request
  costs the service much more than its bytes (``sources.COSTLY_REQUESTS``:
  Glance runs authentication, database and policy for each, whatever its
  size), a stream's request asks for more than its
  room (``[position, limit)``), and reads the response only as far as
  ``limit``: at most twice the span of the request before, and past its
  room at most its room again, or, once it has delivered ``BULK`` bytes,
  as much as it has delivered: a cold whole read so takes a few times
  fewer requests than if each ended at the limit.  At the limit, the pump
  waits for room with the response open, up to ``STREAM_HOLD`` seconds,
  while TCP holds the service back: a stream abandoned there costs what
  the socket buffers took beyond the limit, not the rest of its range.  Other sources' requests end at the limit.  With no
  room and no response open the pump waits; after ``STREAM_IDLE`` seconds
  of that it ends.
- **from the start** (the store refuses ranges): one request from byte 0,
  skipped to ``position`` if it resumes, read to the image's end.

Shared with the trio thread: ``limit`` and ``closed``, under ``cond``.
``position`` is written by the trio thread as blocks are delivered
(``delivered``), and read there only; so are ``waiting`` and ``source``,
through ``attach``, ``detach``, ``take_waiting`` and ``use``.  ``StreamSet``
(below) runs an image's streams for the data path.  Errors from the source propagate out of ``pump``; the
caller decides whether to resume.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import trio

from .errors import BackendUnavailable, ImagefsError, RangesRefused
from .retry import AsyncRetrier, RetryPolicy
from .sources import COSTLY_REQUESTS, Source, closing, skip_bytes

if TYPE_CHECKING:
    from .cache import TieredCache
    from .flights import Flight, Flights
    from .image import ImageState

log = logging.getLogger(__name__)

#: Seekable streams per image at once (several sequential readers at different places).
MAX_STREAMS = 4
#: A block this close past a stream's limit joins the stream rather than a ranged read.
STREAM_REACH = 2
#: Seconds between two progress lines of a stream in the log.
PROGRESS_EVERY = 5.0
#: A seekable stream nobody asked to go further for this long ends.
STREAM_IDLE = 20.0
#: Seconds a stream at its limit keeps its response open for more room.
STREAM_HOLD = 2.0
#: Bytes a stream delivers before it asks a costly source for as much again past its
#: room (before, at most its room again): longer than the longest run a boot reads.
BULK = 64 << 20


def cut_blocks(chunks: Iterable[bytes], first: int,
               length: Callable[[int], int]) -> Iterator[tuple[int, bytes]]:
    """``(index, block)`` from ``chunks`` of any size, blocks ``first, first+1, ...``
    of ``length(index)`` bytes each; a block of length 0 ends it.  A last
    partial block is not yielded (the caller sees where the blocks stopped).
    Each byte is copied at most once (a chunk that is exactly a block, none)."""
    index, want = first, length(first)
    parts: list = []   # pieces of the block begun in earlier chunks
    have = 0
    for chunk in chunks:
        if want <= 0:
            return
        view, start = memoryview(chunk), 0
        if parts:  # complete the block begun in an earlier chunk
            take = min(want - have, len(view))
            parts.append(view[:take])
            have += take
            start = take
            if have < want:
                continue
            yield index, b"".join(parts)
            parts, have = [], 0
            index += 1
            want = length(index)
        if start == 0 and len(view) == want:  # the usual case: chunks are blocks
            yield index, chunk if isinstance(chunk, bytes) else bytes(chunk)
            index += 1
            want = length(index)
            continue
        while want > 0 and len(view) - start >= want:
            yield index, bytes(view[start:start + want])
            start += want
            index += 1
            want = length(index)
        if want > 0 and start < len(view):
            parts.append(view[start:])
            have = len(view) - start


class Stream:
    def __init__(self, source: Source | None, *, start: int, limit: int | None, blocks: int,
                 block_size: int, size: int, seekable: bool):
        self.source = source            # given by ``use`` before ``pump`` runs
        self.position = start           # the next block it will deliver (trio side)
        self.limit = limit              # it may fetch blocks < limit (None: to the end)
        self.blocks, self.block_size, self.size = blocks, block_size, size
        self.seekable = seekable
        self.cond = threading.Condition()
        self.closed = False
        self.waiting: dict[int, Flight] = {}  # block index -> a reader's flight (trio side)

    def __repr__(self) -> str:
        kind = "seekable" if self.seekable else "from-start"
        return f"Stream({kind}, at {self.position}, limit {self.limit})"

    # ---- the trio side ------------------------------------------------------------------
    def use(self, source: Source) -> None:
        self.source = source

    def delivered(self, index: int) -> None:
        """Block ``index`` was handed over: the stream goes on from the next."""
        self.position = index + 1

    def attach(self, index: int, flight: Flight) -> None:
        """``flight`` waits for the stream to deliver block ``index``."""
        self.waiting[index] = flight
        flight.stream = self

    def detach(self, index: int, flight: Flight) -> None:
        if self.waiting.get(index) is flight:
            del self.waiting[index]

    def take_waiting(self) -> list[tuple[int, Flight]]:
        """The flights still waiting, no longer attached to the stream."""
        waiting, self.waiting = list(self.waiting.items()), {}
        for _, flight in waiting:
            flight.stream = None
        return waiting

    def block_length(self, index: int) -> int:
        return max(0, min(self.block_size, self.size - index * self.block_size))

    def near(self, index: int, reach: int) -> bool:
        """Whether block ``index`` is ahead of it, within its limit or ``reach`` past it."""
        return not self.closed and self.position <= index and \
            (self.limit is None or index < self.limit + reach)

    def extend(self, limit: int) -> None:
        with self.cond:
            if self.limit is not None and limit > self.limit:
                self.limit = min(limit, self.blocks)
                self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()

    def _room(self, index: int, wait: float | None = None) -> int | None:
        """In the pump: wait up to ``wait`` seconds (``STREAM_IDLE``) until block
        ``index`` may be fetched; the end of the room (exclusive), or None
        (closed, or no room in time)."""
        with self.cond:
            until = time.monotonic() + (STREAM_IDLE if wait is None else wait)
            while not self.closed and self.limit is not None and index >= self.limit:
                left = until - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            if self.closed:
                return None
            return self.blocks if self.limit is None else self.limit

    def _may_go_on(self, index: int) -> bool:
        """In the pump, within a response: whether block ``index`` may be read from
        it, now or within ``STREAM_HOLD`` seconds."""
        return self.limit is None or index < self.limit or \
            self._room(index, STREAM_HOLD) is not None

    def pump(self, start: int, deliver: Callable[[int, bytes], None]) -> int:
        """In a worker thread: fetch blocks from ``start`` on and ``deliver`` each
        (in order; ``deliver`` must not block for long).  Returns the next
        block it would have fetched when it stops (closed, idle, or at the
        end); raises what the source raises, or ``BackendUnavailable`` if a
        response ends early."""
        bs = self.block_size
        index, span = start, 0
        while index < self.blocks:
            end = self._room(index)
            if end is None:
                return index
            if self.seekable:
                if self.source.kind in COSTLY_REQUESTS:  # past the limit: see above
                    room, done = end - index, index - start
                    beyond = done if done * bs >= BULK else room
                    span = max(room, min(2 * span, room + beyond))
                    end = min(self.blocks, index + span)
                chunks = self.source.stream(index * bs, min(end * bs, self.size))
            else:
                chunks = skip_bytes(self.source.stream(0, None), index * bs)
                end = self.blocks
            with closing(chunks) as body:
                for index_, data in cut_blocks(body, index, self.block_length):
                    deliver(index_, data)
                    index = index_ + 1
                    if self.closed or index >= end or not self._may_go_on(index):
                        break
                else:
                    if index < end:
                        raise BackendUnavailable(f"the response ended at block {index}, "
                                                 f"before {end}")
            if self.closed:
                return index
        return index


class StreamSet:
    """The streams of one image: which one a block should wait for, opening
    them (at most ``MAX_STREAMS`` seekable ones; one from the start for a store
    that refuses ranges), running each in a thread of its own, and saying how
    far a long one is.

    A delivered block goes to the memory tier (and was offered to the disk
    tier's writers, which never hold a stream up: ``TieredCache.write_behind``)
    and completes the flight waiting for it.  When a stream ends, the readers
    still waiting go back to ``dispatch`` (a seekable stream's: ranged reads
    retry on their own) or fail (a stream from the start has retried for them).
    """

    def __init__(self, image: ImageState, *, cache: TieredCache, flights: Flights,
                 nursery: trio.Nursery, retry: RetryPolicy, stats: dict,
                 dispatch: Callable[[ImageState, int, Flight], None]):
        self.image, self.cache, self.flights = image, cache, flights
        self.nursery, self.retry, self.stats, self.dispatch = nursery, retry, stats, dispatch
        self._streams: list[Stream] = []

    def __len__(self) -> int:
        return len(self._streams)

    def near(self, index: int) -> Stream | None:
        """A seekable stream that will fetch block ``index`` anyway, else one that
        nearly reaches it (extending another would fetch the block twice)."""
        near = [s for s in self._streams if s.seekable and s.near(index, STREAM_REACH)]
        return next((s for s in near if index < s.limit), near[0] if near else None)

    def from_start(self) -> Stream:
        """The image's stream from the start: the one running, else a new one."""
        stream = next((s for s in self._streams if not s.seekable and not s.closed), None)
        return stream or self.open(0, None, seekable=False)

    def wait_from_start(self, index: int, flight: Flight) -> None:
        """``flight`` waits for the stream from the start (the store refuses ranges)."""
        data = self.cache.get(flight.key)  # it may have gone by meanwhile
        if data is not None:
            self.flights.complete(flight, data)
        else:
            self.from_start().attach(index, flight)

    def open(self, start: int, limit: int | None, seekable: bool) -> Stream:
        if seekable:
            running = [s for s in self._streams if s.seekable and not s.closed]
            if len(running) >= MAX_STREAMS:
                running[0].close()
        image = self.image
        stream = Stream(None, start=start, limit=limit, blocks=image.blocks,
                        block_size=image.block_size, size=image.ref.size, seekable=seekable)
        self._streams.append(stream)
        self.stats["streams"] += 1
        log.debug("image %s: %s", image.ref.id, stream)
        self.nursery.start_soon(self._run, stream)
        return stream

    def _progress(self, stream: Stream) -> Callable[[], None]:
        """A call per delivered block that logs, every ``PROGRESS_EVERY`` seconds,
        how far the stream is."""
        began = logged = trio.current_time()
        first, image = stream.position, self.image

        def tick() -> None:
            nonlocal logged
            now = trio.current_time()
            if now - logged >= PROGRESS_EVERY:
                logged = now
                mib = image.block_size / 2**20
                log.info("image %s: streaming, at %.0f of %.0f MiB (%.0f MiB/s)", image.ref.id,
                         stream.position * mib, image.ref.size / 2**20,
                         (stream.position - first) * mib / max(now - began, 1e-3))
        return tick

    async def _run(self, stream: Stream) -> None:
        token = trio.lowlevel.current_trio_token()
        image, cache, flights = self.image, self.cache, self.flights
        tick = self._progress(stream)

        def deliver(index: int, data: bytes, queued: bool) -> None:  # on the trio thread;
            stream.delivered(index)                                    # must not raise
            tick()
            key = image.key(index)
            cache.put(key, data)
            if not queued:
                cache.write_behind(key)
            image.count(data)
            flight = stream.waiting.get(index) or flights.get(key)
            if flight is not None:
                flights.complete(flight, data)

        def handover(index: int, data: bytes) -> None:  # in the pump thread
            queued = cache.store_later(image.key(index), data)  # never waits
            token.run_sync_soon(deliver, index, data, queued)  # in order, without waiting

        error: BaseException | None = None
        try:
            stream.use(await image.source())
            error = await self._pump(stream, handover)
        except ImagefsError as exc:
            error = exc
        except trio.Cancelled:
            stream.close()
            raise
        except Exception as exc:
            log.exception("unexpected error streaming image %s", image.ref.id)
            error = BackendUnavailable(f"image {image.ref.id}: {exc!r}")
        finally:
            stream.close()
            if stream in self._streams:
                self._streams.remove(stream)
        # Readers still waiting: a seekable stream's go to ranged reads, which retry on
        # their own; a stream from the start has retried for them already.
        retry_elsewhere = error is None or (stream.seekable and
                                            isinstance(error, BackendUnavailable))
        for index, flight in stream.take_waiting():
            if flight.done.is_set():
                continue
            if retry_elsewhere:
                self.dispatch(image, index, flight)
            else:
                flights.fail(flight, error)

    async def _pump(self, stream: Stream, handover) -> BaseException | None:
        """Run the stream's pump, resumed while readers wait for it (a stream from
        the start only: a seekable one's readers retry with ranged reads); the
        error it ended with, if any."""
        image = self.image

        def deadline() -> float | None:  # the latest waiting reader's, at each failure
            waiting = [f.deadline for f in stream.waiting.values()]
            return None if stream.seekable or not waiting else max(waiting)

        def on_retry(exc: BaseException, delay: float) -> None:
            self.stats["retries"] += 1
            log.info("image %s: stream at block %d failed: %s; resuming in %.2fs",
                     image.ref.id, stream.position, exc, delay)

        # Deliveries queued before a thread gave up have run: position is current.
        retrier = AsyncRetrier(self.retry, deadline=deadline, on_retry=on_retry)
        try:
            await retrier(lambda: trio.to_thread.run_sync(
                stream.pump, stream.position, handover, abandon_on_cancel=True))
        except RangesRefused:
            image.refuse_ranges()
        except BackendUnavailable as exc:
            log.info("image %s: stream at block %d failed: %s", image.ref.id,
                     stream.position, exc)
            return exc
        return None
