"""The retry runners: what is retried, how long, and what the hooks see.

The blocking runner runs on a hand-driven clock (its sleep advances it); the
async one under trio's ``MockClock``, so no test waits in real time.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from imagefs.errors import BackendUnavailable, ImageNotFound
from imagefs.retry import AsyncRetrier, Backoff, Retrier, RetryPolicy, call_with_retries

POLICY = RetryPolicy(base_delay=0.1, max_delay=1.0, deadline=5.0)


class Clock:
    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay


def failing(times: int, result="ok", error=BackendUnavailable):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= times:
            raise error(f"failure {len(calls)}")
        return result
    fn.calls = calls
    return fn


def test_backoff_delays_are_jittered_doubling_and_capped():
    backoff = Backoff(RetryPolicy(base_delay=0.1, max_delay=0.4, deadline=100), clock=lambda: 0.0,
                      rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(5)]
    caps = [0.1, 0.2, 0.4, 0.4, 0.4]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps)), delays
    assert backoff.tries == 6


def test_retrier_retries_until_success_and_reports_each_retry():
    clock, seen = Clock(), []
    fn = failing(3)
    retrier = Retrier(POLICY, clock=clock, sleep=clock.sleep,
                      on_retry=lambda exc, delay: seen.append((str(exc), delay)))
    assert retrier(fn) == "ok"
    assert len(fn.calls) == 4 and retrier.tries == 4
    assert [s[0] for s in seen] == ["failure 1", "failure 2", "failure 3"]
    assert [s[1] for s in seen] == clock.slept


def test_retrier_gives_up_at_the_deadline_with_the_last_error():
    clock = Clock()
    fn = failing(10 ** 6)
    with pytest.raises(BackendUnavailable):
        Retrier(POLICY, clock=clock, sleep=clock.sleep)(fn)
    assert clock.now - 100.0 < POLICY.deadline  # no try started after the deadline
    assert clock.now - 100.0 > POLICY.deadline - POLICY.max_delay
    assert len(fn.calls) == len(clock.slept) + 1


def test_retrier_gives_up_after_the_attempts():
    clock = Clock()
    fn = failing(10)
    with pytest.raises(BackendUnavailable, match="failure 3"):
        Retrier(RetryPolicy(attempts=3), clock=clock, sleep=clock.sleep)(fn)
    assert len(fn.calls) == 3


def test_an_absolute_deadline_overrides_the_policys():
    clock = Clock()
    fn = failing(10 ** 6)
    with pytest.raises(BackendUnavailable):
        Retrier(POLICY, deadline=clock.now + 1.0, clock=clock, sleep=clock.sleep)(fn)
    assert clock.now - 100.0 < 1.0


def test_a_deadline_callable_is_asked_at_each_failure_and_none_gives_up():
    clock, answers = Clock(), [200.0, 200.0, None]
    fn = failing(10)
    with pytest.raises(BackendUnavailable, match="failure 3"):
        Retrier(POLICY, deadline=lambda: answers.pop(0), clock=clock, sleep=clock.sleep)(fn)
    assert len(fn.calls) == 3 and answers == []


def test_other_errors_are_not_retried():
    clock = Clock()
    fn = failing(1, error=ImageNotFound)
    with pytest.raises(ImageNotFound):
        Retrier(POLICY, clock=clock, sleep=clock.sleep)(fn)
    assert len(fn.calls) == 1 and clock.slept == []


def test_iterate_reopens_where_the_caller_says_and_shares_one_budget():
    clock, opened, closed = Clock(), [], []
    data = list(range(10))
    position = 0

    def open_():
        opened.append(position)

        def gen():
            try:
                for i, item in enumerate(data[position:]):
                    if len(opened) < 3 and i == 2:
                        raise BackendUnavailable("dropped")
                    yield item
            finally:
                closed.append(len(opened))
        return gen()

    retrier = Retrier(POLICY, clock=clock, sleep=clock.sleep)
    got = []
    for item in retrier.iterate(open_):
        got.append(item)
        position += 1
    assert got == data
    assert opened == [0, 2, 4]
    assert closed == [1, 2, 3]
    assert retrier.tries == 3  # one budget across the reopenings


def test_iterate_closes_the_open_iterator_when_abandoned():
    closed = []

    def gen():
        try:
            yield from range(100)
        finally:
            closed.append(True)
    it = Retrier(POLICY).iterate(gen)
    assert next(it) == 0
    it.close()
    assert closed == [True]


def test_call_with_retries_logs_retries_and_giving_up(caplog):
    caplog.set_level("INFO", logger="imagefs.retry")
    fn = failing(10 ** 6)
    with pytest.raises(BackendUnavailable):
        call_with_retries(fn, RetryPolicy(attempts=2, base_delay=0.001), "get image x")
    messages = [r.getMessage() for r in caplog.records]
    assert any("get image x: failure 1; retrying" in m for m in messages), messages
    assert any("get image x: giving up after 2 tries" in m for m in messages), messages


async def _async_failing(times: int):
    calls = []

    async def fn():
        calls.append(trio.current_time())
        if len(calls) <= times:
            raise BackendUnavailable(f"failure {len(calls)}")
        return len(calls)
    return fn, calls


def test_async_retrier_waits_on_trios_clock():
    async def main():
        fn, calls = await _async_failing(3)
        seen = []
        retrier = AsyncRetrier(POLICY, on_retry=lambda exc, delay: seen.append(delay))
        assert await retrier(fn) == 4
        gaps = [b - a for a, b in zip(calls, calls[1:])]
        assert gaps == pytest.approx(seen)
        assert trio.current_time() == pytest.approx(sum(seen))
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_async_retrier_gives_up_at_its_deadline():
    async def main():
        fn, calls = await _async_failing(10 ** 6)
        start = trio.current_time()
        with pytest.raises(BackendUnavailable):
            await AsyncRetrier(POLICY, deadline=start + 2.0)(fn)
        assert calls[-1] - start < 2.0
        assert trio.current_time() - start < 2.0
        assert len(calls) > 3
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_async_retrier_follows_a_moving_deadline():
    async def main():
        fn, calls = await _async_failing(10 ** 6)
        start = trio.current_time()
        deadlines = iter([start + 0.5, start + 30.0] + [None] * 100)
        with pytest.raises(BackendUnavailable, match="failure 3"):
            await AsyncRetrier(POLICY, deadline=lambda: next(deadlines))(fn)
        assert len(calls) == 3
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_async_retrier_lets_cancellation_through():
    async def main():
        fn, calls = await _async_failing(10 ** 6)
        with trio.move_on_after(0.3) as scope:
            await AsyncRetrier(POLICY)(fn)
        assert scope.cancelled_caught
        assert trio.current_time() == pytest.approx(0.3)
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
