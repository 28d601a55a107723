"""Flights: one per block, the failure grace, and a reader's wait, on trio's MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from imagefs import flights as flights_module
from imagefs.cache import BlockKey
from imagefs.errors import BackendUnavailable, ImageNotFound
from imagefs.flights import FAILURE_GRACE, Flights

KEY = BlockKey("img", "v1", 4096, 3)


def run(body):
    async def main():
        return await body(Flights())
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.01))


def late() -> BackendUnavailable:
    return BackendUnavailable("late")


def test_a_flight_is_found_by_its_key_until_it_settles():
    async def body(flights):
        flight = flights.new(KEY, deadline=10)
        assert flights.get(KEY) is flight and KEY in flights and flights.busy("img")
        assert not flights.busy("other")
        flights.complete(flight, b"data")
        flights.complete(flight, b"again")  # idempotent: the first answer stands
        flights.fail(flight, late())
        assert flight.data == b"data" and flight.error is None and flight.done.is_set()
        assert flights.get(KEY) is None and not flights.busy("img")

    run(body)


def test_a_failure_answers_readers_of_its_block_only_within_the_grace():
    async def body(flights):
        flights.fail(flights.new(KEY, deadline=10), error := late())
        assert flights.failed_recently(KEY) is error
        await trio.sleep(FAILURE_GRACE)
        assert flights.failed_recently(KEY) is None

    run(body)


def test_a_warm_ups_failure_is_not_remembered():
    async def body(flights):
        flights.fail(flights.new(KEY, deadline=10), late(), remember=False)
        return flights.failed_recently(KEY)

    assert run(body) is None


def test_expired_failures_are_swept(monkeypatch):
    monkeypatch.setattr(flights_module, "_SWEEP_AT", 4)

    async def body(flights):
        for index in range(5):
            flights.fail(flights.new(BlockKey("img", "v1", 4096, index), 10), late())
        await trio.sleep(FAILURE_GRACE)
        flights.fail(flights.new(BlockKey("img", "v1", 4096, 99), 10), late())
        return len(flights._failed)

    assert run(body) == 1


def test_a_reader_waits_until_its_own_deadline_then_fails_a_flight_past_its_own():
    async def body(flights):
        flight = flights.new(KEY, deadline=2.0)
        with pytest.raises(BackendUnavailable, match="late"):
            await flights.wait(flight, 2.0, late, lambda f: pytest.fail("no retry"))
        assert trio.current_time() == pytest.approx(2.0)
        assert flight.done.is_set() and flights.failed_recently(KEY) is flight.error

    run(body)


def test_a_reader_with_time_left_asks_again_when_an_earlier_flight_gives_up():
    async def body(flights):
        first = flights.new(KEY, deadline=1.0)
        asked = []

        def again(failed):
            asked.append(failed)
            second = flights.new(KEY, deadline=5.0)
            trio.lowlevel.current_trio_token().run_sync_soon(
                flights.complete, second, b"second")
            return second

        async def give_up():
            await trio.sleep(1.0)
            flights.fail(first, late())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(give_up)
            data = await flights.wait(first, 5.0, late, again)
        assert data == b"second" and asked == [first]

    run(body)


def test_a_final_error_is_raised_without_asking_again():
    async def body(flights):
        flight = flights.new(KEY, deadline=1.0)
        flights.fail(flight, ImageNotFound("gone"))
        with pytest.raises(ImageNotFound):
            await flights.wait(flight, 5.0, late, lambda f: pytest.fail("no retry"))

    run(body)


def test_a_cached_answer_from_again_ends_the_wait():
    async def body(flights):
        flight = flights.new(KEY, deadline=1.0)
        flights.fail(flight, late())
        return await flights.wait(flight, 5.0, late, lambda f: b"cached meanwhile")

    assert run(body) == b"cached meanwhile"
