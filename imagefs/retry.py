"""Retries: capped exponential backoff with jitter, bounded by a deadline.

One policy and one ``Backoff`` serve every retry loop in imagefs, through two
runners: ``Retrier`` for blocking code (metadata calls, listings and
downloads, in worker threads or the CLI) and ``AsyncRetrier`` on the trio
side (block fetches, warm-ups and streams; its clock is
``trio.current_time``, so tests run it under trio's ``MockClock``).  A runner
is one operation's budget: every call through it shares one ``Backoff``, so a
download that pulls its chunks one call at a time (``Retrier.iterate``) gets
one deadline, not one per chunk.

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
from typing import Awaitable, Callable, Iterable, Iterator, TypeVar, Union

import trio

from .errors import BackendUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A runner's deadline: an absolute time on its clock, or a callable asked at each
#: failure for the deadline now (None: give up), for operations whose waiters change.
Deadline = Union[float, Callable[[], "float | None"], None]
#: on_retry(error, delay): called before each wait, for logs and counters.
OnRetry = Callable[[BaseException, float], None]


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


class _Runner:
    """What the two runners share: one ``Backoff`` and the decision to retry."""

    def __init__(self, policy: RetryPolicy, *, deadline: Deadline = None,
                 on_retry: OnRetry | None = None, clock: Callable[[], float],
                 rng: random.Random | None = None):
        self._deadline = deadline if callable(deadline) else None
        self.backoff = Backoff(policy, None if callable(deadline) else deadline, clock=clock,
                               rng=rng)
        self.on_retry = on_retry

    @property
    def tries(self) -> int:
        return self.backoff.tries

    @property
    def elapsed(self) -> float:
        return self.backoff.elapsed

    def _delay(self, exc: BackendUnavailable) -> float | None:
        """The wait before the next try, or None to give up (``exc`` is raised)."""
        if self._deadline is not None:
            deadline = self._deadline()
            if deadline is None:
                return None
            self.backoff.deadline = deadline
        delay = self.backoff.next_delay()
        if delay is not None and self.on_retry is not None:
            self.on_retry(exc, delay)
        return delay


class Retrier(_Runner):
    """Blocking calls retried on ``BackendUnavailable`` within one budget.

    ``retrier(fn)`` returns ``fn()``'s result, trying again after each
    ``BackendUnavailable`` until the policy or the deadline gives up, and then
    raises that error.  Any other exception is raised at once.
    """

    def __init__(self, policy: RetryPolicy, *, deadline: Deadline = None,
                 on_retry: OnRetry | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
        super().__init__(policy, deadline=deadline, on_retry=on_retry, clock=clock, rng=rng)
        self._sleep = sleep

    def __call__(self, fn: Callable[[], T]) -> T:
        while True:
            try:
                return fn()
            except BackendUnavailable as exc:
                delay = self._delay(exc)
                if delay is None:
                    raise
                self._sleep(delay)

    def iterate(self, open_: Callable[[], Iterable[T]]) -> Iterator[T]:
        """The items of ``open_()``, opened again with ``open_()`` after a
        ``BackendUnavailable`` (at the open or part-way); ``open_`` decides where
        the new iterator starts (an offset, a marker).  The iterator in use is
        closed when this one is."""
        current: Iterator[T] | None = None
        done = object()

        def pull():
            nonlocal current
            try:
                if current is None:
                    current = iter(open_())
                return next(current, done)
            except BackendUnavailable:
                _close(current)
                current = None
                raise
        try:
            while (item := self(pull)) is not done:
                yield item
        finally:
            _close(current)


class AsyncRetrier(_Runner):
    """``Retrier`` for trio: ``await retrier(fn)`` awaits ``fn()`` (an async
    callable), waiting with ``trio.sleep`` on ``trio.current_time``::

        retrier = AsyncRetrier(policy, deadline=flight.deadline, on_retry=count)
        data = await retrier(lambda: trio.to_thread.run_sync(fetch, ...))

    A deadline that moves with its waiters is a callable (None: give up now).
    Cancellation passes through at once, as any error but ``BackendUnavailable``.
    """

    def __init__(self, policy: RetryPolicy, *, deadline: Deadline = None,
                 on_retry: OnRetry | None = None, rng: random.Random | None = None):
        super().__init__(policy, deadline=deadline, on_retry=on_retry,
                         clock=trio.current_time, rng=rng)

    async def __call__(self, fn: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                return await fn()
            except BackendUnavailable as exc:
                delay = self._delay(exc)
                if delay is None:
                    raise
                await trio.sleep(delay)


def _close(it: object) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, what: str,
                      deadline: float | None = None) -> T:
    """``fn()``, tried again on ``BackendUnavailable`` until the policy (or the
    absolute ``deadline`` on ``time.monotonic``) gives up, with a log line for
    each retry and one on giving up.  Blocking."""
    retrier = Retrier(policy, deadline=deadline, on_retry=lambda exc, delay: log.info(
        "%s: %s; retrying in %.2fs", what, exc, delay))
    try:
        return retrier(fn)
    except BackendUnavailable as exc:
        log.warning("%s: giving up after %d tries in %.1fs: %s", what, retrier.tries,
                    retrier.elapsed, exc)
        raise
