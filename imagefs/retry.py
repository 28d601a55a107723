"""Retries: capped exponential backoff with jitter, bounded by a deadline.

One policy and one ``Backoff`` serve every retry loop in imagefs: metadata
calls and downloads in worker threads (``call_with_retries``), and block
fetches and streams on the trio side (``Backoff`` with ``trio.current_time``
as its clock, so that tests run them under trio's ``MockClock``).

Only ``BackendUnavailable`` is retried: drivers raise it for connection
failures, timeouts and 5xx answers, and only from operations that are safe
to repeat (reads).  Creates and uploads are never passed through here.

A loop keeps trying until its deadline: a try starts only if it can start
before the deadline, and the delay before try ``n`` is drawn from
``[d/2, d]`` with ``d = min(base_delay * 2**n, max_delay)`` ("equal
jitter"), so that many readers retrying at once do not retry in step.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Callable, TypeVar

from .errors import BackendUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    base_delay: float = 0.1    # seconds before the second try, at most; doubles each time
    max_delay: float = 1.0     # the cap on one delay
    deadline: float = 20.0     # seconds after the first try: no try starts later
    attempts: int | None = None  # tries in all (the first included); None: until the deadline


class Backoff:
    """The delays of one operation's retries.

    ``deadline`` is an absolute time on ``clock`` (default: ``policy.deadline``
    from now).  ``next_delay()`` is the time to wait before the next try, or
    None when the operation should give up.
    """

    def __init__(self, policy: RetryPolicy, deadline: float | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.policy, self.clock = policy, clock
        self.started = clock()
        self.deadline = self.started + policy.deadline if deadline is None else deadline
        self.tries = 1
        self._rng = rng or random

    def next_delay(self) -> float | None:
        policy = self.policy
        if policy.attempts is not None and self.tries >= policy.attempts:
            return None
        cap = min(policy.base_delay * 2 ** (self.tries - 1), policy.max_delay)
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if self.clock() + delay >= self.deadline:
            return None
        self.tries += 1
        return delay

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def remaining(self) -> float:
        return max(0.0, self.deadline - self.clock())


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, what: str,
                      deadline: float | None = None) -> T:
    """``fn()``, tried again on ``BackendUnavailable`` until the policy (or the
    absolute ``deadline`` on ``time.monotonic``) gives up.  Blocking."""
    backoff = Backoff(policy, deadline)
    while True:
        try:
            return fn()
        except BackendUnavailable as exc:
            delay = backoff.next_delay()
            if delay is None:
                log.warning("%s: giving up after %d tries in %.1fs: %s", what, backoff.tries,
                            backoff.elapsed, exc)
                raise
            log.info("%s: %s; retrying in %.2fs", what, exc, delay)
            time.sleep(delay)
