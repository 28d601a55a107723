"""Bounded retries with exponential backoff and a deadline.

Only ``BackendUnavailable`` is retried: drivers raise it for connection
failures, timeouts and 5xx answers, and only from operations that are safe to
repeat (reads).  Creates and uploads are never passed through here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, TypeVar

from .errors import BackendUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4          # tries in all, the first included
    base_delay: float = 0.25   # seconds before the second try; doubles each time
    max_delay: float = 4.0
    deadline: float = 20.0     # no new try starts after this many seconds

    def delays(self):
        delay = self.base_delay
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_delay)
            delay *= 2


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """``fn()``, tried again on ``BackendUnavailable`` as ``policy`` allows."""
    start = time.monotonic()
    delays = policy.delays()
    while True:
        try:
            return fn()
        except BackendUnavailable as exc:
            delay = next(delays, None)
            elapsed = time.monotonic() - start
            if delay is None or elapsed + delay > policy.deadline:
                log.warning("%s: giving up after %.1fs: %s", what, elapsed, exc)
                raise
            log.info("%s: %s; retrying in %.2fs", what, exc, delay)
            time.sleep(delay)
