"""ImageRef and the per-image state of the data path: made once, dropped when gone."""

from __future__ import annotations

import trio
import trio.testing
from fake_source import FakeSource

from imagefs.cache import MemoryCache, TieredCache
from imagefs.flights import Flights
from imagefs.image import ImageRef, Images

BS = 4096
REF = ImageRef("img", "v1", 10 * BS + 1)
STATS = {"fetched_blocks": 0, "fetched_bytes": 0}


def test_a_ref_checks_with_the_multihash_else_the_md5():
    record = {"id": "a", "size": 5, "checksum": "c0", "os_hash_algo": "sha512",
              "os_hash_value": "h"}
    assert ImageRef.of(record) == ImageRef("a", "h", 5, "sha512", "h")
    del record["os_hash_value"]
    assert ImageRef.of(record) == ImageRef("a", "c0", 5, "md5", "c0")
    ref = ImageRef.of({"id": "b", "size": None, "created_at": "t"})
    assert (ref.size, ref.hash_algo, ref.hash_value) == (0, None, None)


def run(body, open_source=None):
    opened = []

    def default_open(ref, trusted):
        opened.append(trusted)
        return FakeSource(bytes(ref.size))

    async def main():
        async with trio.open_nursery() as nursery:
            flights = Flights()
            images = Images(open_source or default_open, TieredCache(MemoryCache(BS * 64), None),
                            flights, block_size=BS, nursery=nursery, stats=dict(STATS),
                            make_streams=lambda state: [])
            try:
                return await body(images, flights)
            finally:
                nursery.cancel_scope.cancel()

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.01)), opened


def test_one_state_per_image_with_its_block_arithmetic():
    async def body(images, flights):
        state = images.of(REF)
        assert images.of(ImageRef("img", "v1", REF.size)) is state and images.get("img") is state
        assert state.blocks == 11 and state.block_length(10) == 1 and state.block_length(11) == 0
        assert state.indexes(BS - 1, 2 * BS + 1) == range(0, 3)
        assert state.indexes(REF.size, REF.size + 5) == range(0)
        assert state.key(3).index == 3 and state.key(3).image_id == "img"

    run(body)


def test_the_source_is_opened_once_for_concurrent_readers():
    async def body(images, flights):
        state = images.of(REF)
        assert state.path() is None  # before its first fetch
        got = []
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(_append, got, state.source)
        assert len(got) == 5 and all(s is got[0] for s in got)
        assert state.path() == "fake"

    _, opened = run(body)
    assert opened == [True]


async def _append(got, fn):
    got.append(await fn())


def test_a_gone_image_is_dropped_when_idle_and_its_flags_go_with_it():
    async def body(images, flights):
        state = images.of(REF)
        await state.source()
        state.refuse_ranges()
        state.distrusted = True
        state.count(b"x" * 100)
        images.forget("img")
        assert images.get("img") is None
        fresh = images.of(REF)
        return fresh.no_ranges, fresh.distrusted, fresh.fetched

    assert run(body)[0] == (False, False, 0)


def test_a_gone_image_in_use_is_dropped_at_its_last_release():
    async def body(images, flights):
        images.hold(REF)
        images.hold(REF)
        state = images.get("img")
        images.forget("img")
        assert images.get("img") is state  # open files still read it
        images.unhold(REF)
        assert images.get("img") is state
        images.unhold(REF)
        assert images.get("img") is None

    run(body)


def test_a_gone_image_with_a_block_on_its_way_is_kept():
    async def body(images, flights):
        state = images.of(REF)
        flight = flights.new(state.key(0), deadline=5)
        images.forget("img")
        assert images.get("img") is state
        flights.complete(flight, b"data")
        images.forget("img")
        assert images.get("img") is None

    run(body)
