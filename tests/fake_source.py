"""A ``Source`` of bytes in memory that injects faults, for fast, exact tests of
the layers above a driver (as mountpoint-s3 tests with its failure client).

Faults, each set on the instance (any thread may set them):

- ``fail``: the next N requests raise ``BackendUnavailable`` (a 503);
- ``stalled``: while set, requests hang until ``release()`` (or their timeout);
- ``reset_after`` with ``reset_count``: the next N bodies end with
  ``BackendUnavailable`` after that many bytes (a connection reset);
- ``short_count``: the next N bodies end early without an error (a torn response);
- ``ranges = False``: every request that starts past 0 or stops before the end
  raises ``RangesRefused`` (Glance on rbd, swift, s3, http).

It counts what it sends: ``requests``, ``ranged_requests`` and ``sent`` (bytes).
"""

from __future__ import annotations

import threading
from typing import Iterator

from imagefs.errors import BackendUnavailable, RangesRefused

CHUNK = 64 << 10


class FakeSource:
    kind = "fake"

    def __init__(self, data: bytes, *, ranges: bool = True):
        self.data = data
        self.ranges = ranges
        self.lock = threading.Lock()
        self.fail = 0
        self.reset_after: int | None = None
        self.reset_count = 0
        self.short_count = 0
        self.stalled = False
        self._released = threading.Event()
        self.requests = self.ranged_requests = self.sent = 0
        self.log: list[tuple[int, int | None]] = []  # (offset, end) of each request

    def stall(self) -> None:
        with self.lock:
            self.stalled = True
            self._released.clear()

    def release(self) -> None:
        with self.lock:
            self.stalled = False
            self._released.set()

    def read(self, offset: int, length: int, timeout: float | None = None) -> bytes:
        return b"".join(self.stream(offset, offset + length, timeout))

    def stream(self, offset: int, end: int | None = None,
               timeout: float | None = None) -> Iterator[bytes]:
        size = len(self.data)
        with self.lock:
            self.requests += 1
            self.log.append((offset, end))
            ranged = offset > 0 or (end is not None and end < size)
            self.ranged_requests += ranged
            if self.fail > 0:
                self.fail -= 1
                raise BackendUnavailable("injected 503")
            if ranged and not self.ranges:
                raise RangesRefused("injected: the store refuses Range requests")
            stalled = self.stalled
            reset = None
            if self.reset_after is not None and self.reset_count > 0:
                self.reset_count -= 1
                reset = self.reset_after
            short = self.short_count > 0
            self.short_count -= short
        if stalled and not self._released.wait(timeout if timeout is not None else 3600):
            raise BackendUnavailable("injected stall: timed out")
        stop = size if end is None else min(end, size)
        if short:
            stop = offset + (stop - offset) // 2
        return self._body(offset, stop, reset)

    def _body(self, offset: int, stop: int, reset: int | None) -> Iterator[bytes]:
        sent = 0
        while offset < stop:
            chunk = self.data[offset:min(offset + CHUNK, stop)]
            if reset is not None and sent + len(chunk) > reset:
                chunk = chunk[:reset - sent]
                with self.lock:
                    self.sent += len(chunk)
                yield chunk
                raise BackendUnavailable("injected connection reset")
            with self.lock:
                self.sent += len(chunk)
            sent += len(chunk)
            offset += len(chunk)
            yield chunk

    def close(self) -> None:
        pass
