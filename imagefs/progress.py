"""Progress of long work: the one throttle, and a line on stderr when it is a terminal.

``Throttle`` says when progress is due again, on any clock (``time.monotonic``
for a command, ``trio.current_time`` in the daemon); ``ProgressLine`` redraws
one line at most 5 times a second; ``human`` writes byte counts.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


class Throttle:
    """``due()`` is True at most once every ``every`` seconds of ``clock``: at once the
    first time, or with ``wait_first`` only ``every`` seconds after it was made."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic,
                 wait_first: bool = False):
        self.every, self.clock = every, clock
        self._last: float | None = clock() if wait_first else None

    def due(self, now: float | None = None, force: bool = False) -> bool:
        """Whether to show progress now (``force``: yes, and count it as shown)."""
        now = self.clock() if now is None else now
        if not force and self._last is not None and now - self._last < self.every:
            return False
        self._last = now
        return True


class ProgressLine:
    """``progress(image_id, done, total)`` that redraws one line, at most 5 times a second
    (and always when ``done`` reaches ``total``)."""

    def __init__(self, verb: str, stream: TextIO = sys.stderr):
        self.verb = verb
        self.stream = stream
        self.start = time.monotonic()
        self.throttle = Throttle(0.2)
        self.shown = False

    def __call__(self, image_id: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.throttle.due(now, force=done == total):
            return
        rate = done / max(now - self.start, 1e-6)
        part = f"{human(done)}" + (f" of {human(total)} ({100 * done / total:.0f}%)"
                                   if total else "")
        self.stream.write(f"\r{self.verb} {image_id}: {part} at {human(rate)}/s\033[K")
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
