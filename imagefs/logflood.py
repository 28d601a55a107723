"""A flood of one warning, collapsed into a count.

A failing disk or service can make the mount warn about every block it
touches: thousands of lines a second that bury everything else and fill the
log's disk.  ``CollapseRepeats`` passes the first warning of a kind, counts
the repeats that come within ``window`` seconds of it, and then logs one
line for them::

    disk cache: cannot read ... (repeated 37 times in the last 10 s)

That line comes with the first occurrence after the window, or, for a flood
that stopped, with the next record of any kind, or at ``flush`` (the mount
calls it when it ends).  A warning's kind is its logger, level and format
string (``record.msg``), not the formatted line: a flood usually varies its
arguments (a block number, a path), which would otherwise defeat it.  The
count's line shows the last of them.  Records below ``level`` (WARNING) pass
untouched: info lines are what ``-v`` asked for.

A filter on the handlers, not on loggers: a logger's filters see only the
records logged on it, not the ones its children propagate.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

_SUMMARY = "_imagefs_repeat_summary"
_MAX_KINDS = 1024  # kinds remembered at once (a bound, not a limit anyone should meet)


@dataclasses.dataclass
class _Seen:
    start: float          # the clock when the window opened (its first occurrence)
    count: int = 0        # repeats since, not passed
    last: logging.LogRecord | None = None


class CollapseRepeats(logging.Filter):
    def __init__(self, window: float = 10.0, level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window, self.level, self.clock = window, level, clock
        self._seen: dict[tuple, _Seen] = {}
        self._handlers: list[logging.Handler] = []
        self._lock = threading.Lock()

    def install(self, handlers: list[logging.Handler]) -> CollapseRepeats:
        for handler in handlers:
            handler.addFilter(self)
            self._handlers.append(handler)
        return self

    def remove(self) -> None:
        """``flush``, then off the handlers it was installed on."""
        self.flush()
        for handler in self._handlers:
            handler.removeFilter(self)
        self._handlers = []

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        now = self.clock()
        due = self._expired(now)
        passed = True
        if record.levelno >= self.level:
            kind = (record.name, record.levelno, str(record.msg))
            with self._lock:
                seen = self._seen.get(kind)
                if seen is not None and now - seen.start < self.window:
                    seen.count += 1
                    seen.last = record
                    passed = False
                else:
                    if len(self._seen) >= _MAX_KINDS:
                        self._seen.clear()
                    self._seen[kind] = _Seen(now)
        self._emit(due, now)
        return passed

    def flush(self) -> None:
        """Log the count of every window that has repeats, closed or not."""
        now = self.clock()
        with self._lock:
            due = [(s, now) for s in self._seen.values() if s.count]
            self._seen.clear()
        self._emit(due, now)

    def _expired(self, now: float) -> list[tuple[_Seen, float]]:
        """Windows past their end, out of the table (those with repeats, to log)."""
        with self._lock:
            gone = [k for k, s in self._seen.items() if now - s.start >= self.window]
            return [(s, now) for s in (self._seen.pop(k) for k in gone) if s.count]

    def _emit(self, due: list[tuple[_Seen, float]], now: float) -> None:
        for seen, _ in due:
            last = seen.last
            span = min(now - seen.start, self.window)
            summary = logging.makeLogRecord(last.__dict__)
            summary.msg = (f"{last.getMessage()} (repeated {seen.count} "
                           f"time{'s' if seen.count != 1 else ''} in the last {span:.3g} s)")
            summary.args = None
            summary.exc_info = summary.exc_text = None
            setattr(summary, _SUMMARY, True)
            for handler in self._handlers:
                handler.handle(summary)
