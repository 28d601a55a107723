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
  Glance spends about 10 ms of CPU on each, authentication, database and
  policy, whatever its size), a stream's request asks for more than its
  room (``[position, limit)``), and reads the response only as far as
  ``limit``: at most twice the span of the request before, and past its
  room at most its room again, or, once it has delivered ``BULK`` bytes,
  as much as it has delivered.  A cold 1 GiB read took 99 requests when
  each ended at the limit, and takes about 40 so.  At the limit, the pump
  waits for room with the response open, up to ``STREAM_HOLD`` seconds,
  while TCP holds the service back: a stream abandoned there costs what
  the socket buffers took beyond the limit (3-6 MiB on loopback), not the
  rest of its range.  Other sources' requests end at the limit.  With no
  room and no response open the pump waits; after ``STREAM_IDLE`` seconds
  of that it ends.
- **from the start** (the store refuses ranges): one request from byte 0,
  skipped to ``position`` if it resumes, read to the image's end.

Shared with the trio thread: ``limit`` and ``closed``, under ``cond``.
``position`` is written by the trio thread as blocks are delivered, and
read there only.  Errors from the source propagate out of ``pump``; the
caller decides whether to resume.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

from .errors import BackendUnavailable
from .sources import COSTLY_REQUESTS, Source, closing, skip_bytes

#: A seekable stream nobody asked to go further for this long ends.
STREAM_IDLE = 20.0
#: Seconds a stream at its limit keeps its response open for more room.
STREAM_HOLD = 2.0
#: Bytes a stream delivers before it asks a costly source for as much again past its
#: room (before, at most its room again): longer than the runs of a boot (34.6 MB was
#: the test guest's longest; at 32 MiB its boot cost 5-7 MB more).
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
                 block_size: int, size: int, seekable: bool, timeout: float | None = None):
        self.source = source            # set before ``pump`` runs
        self.position = start           # the next block it will deliver (trio side)
        self.limit = limit              # it may fetch blocks < limit (None: to the end)
        self.blocks, self.block_size, self.size = blocks, block_size, size
        self.seekable = seekable
        self.timeout = timeout
        self.cond = threading.Condition()
        self.closed = False
        self.waiting: dict = {}         # block index -> the flight of a reader (trio side)

    def __repr__(self) -> str:
        kind = "seekable" if self.seekable else "from-start"
        return f"Stream({kind}, at {self.position}, limit {self.limit})"

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
                chunks = self.source.stream(index * bs, min(end * bs, self.size), self.timeout)
            else:
                chunks = skip_bytes(self.source.stream(0, None, self.timeout), index * bs)
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
