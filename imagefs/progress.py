"""Progress of long transfers on stderr, only when it is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


class ProgressLine:
    """``progress(image_id, done, total)`` that redraws one line, at most 5 times a second."""

    def __init__(self, verb: str, stream: TextIO = sys.stderr):
        self.verb = verb
        self.stream = stream
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, image_id: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and done != total:
            return
        self.last = now
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
