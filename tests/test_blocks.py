"""BlockReader against a fault-injecting source in memory, on trio's MockClock.

Times here are the mock clock's: exact, and independent of the machine's
load.  Worker threads still run for real; the clock jumps only once nothing
has happened for ``autojump_threshold`` real seconds, so a stalled request
costs no real time and a quick one never sees the clock move.
"""

from __future__ import annotations

import hashlib
import random
import time

import pytest
import trio
import trio.testing
from fake_source import FakeSource

from imagefs.blocks import FAILURE_GRACE, BlockReader, ImageRef
from imagefs.cache import BlockKey, DiskCache, MemoryCache, TieredCache
from imagefs.cache import disk as disk_module
from imagefs.errors import BackendUnavailable
from imagefs.retry import RetryPolicy

KiB, MiB = 1 << 10, 1 << 20
BS = 64 * KiB
DEADLINE = 5.0


def image_of(data: bytes) -> ImageRef:
    return ImageRef("img", "v1", len(data))


def run(source: FakeSource, body, *, memory: int = 8 * MiB, deadline: float = DEADLINE,
        disk: DiskCache | None = None):
    """``await body(reader, image)`` with a BlockReader over ``source``."""
    image = image_of(source.data)

    async def main():
        async with trio.open_nursery() as nursery:
            reader = BlockReader(lambda *_: source, TieredCache(MemoryCache(memory), disk),
                                 block_size=BS, fetch_threads=4, read_deadline=deadline,
                                 retry=RetryPolicy(deadline=deadline), nursery=nursery)
            try:
                return await body(reader, image)
            finally:
                source.release()  # no thread stays blocked past the test
                nursery.cancel_scope.cancel()

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.02))


def data_of(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def test_random_reads_across_blocks_are_byte_exact():
    data = data_of(20 * BS + 777)
    source = FakeSource(data)

    async def body(reader, image):
        rng = random.Random(5)
        cases = [(0, 1), (BS - 1, 2), (len(data) - 1, 10), (len(data), 5), (3 * BS - 7, 2 * BS)]
        cases += [(rng.randrange(len(data)), rng.randrange(1, 3 * BS)) for _ in range(200)]
        for offset, length in cases:
            assert await reader.read(image, offset, length) == data[offset:offset + length]

    run(source, body)
    assert source.sent <= len(data)  # each block once


def test_one_fetch_per_block_however_many_readers():
    data = data_of(4 * BS)
    source = FakeSource(data)

    async def body(reader, image):
        results = {}

        async def one(i):
            results[i] = await reader.read(image, BS + i * 10, 100)
        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(one, i)
        assert all(results[i] == data[BS + i * 10:][:100] for i in range(20))

    run(source, body)
    assert source.requests == 1 and source.sent == BS


def test_a_burst_of_503s_is_retried_until_it_passes():
    data = data_of(4 * BS)
    source = FakeSource(data)
    source.fail = 20

    async def body(reader, image):
        start = trio.current_time()
        assert await reader.read(image, 100, 1000) == data[100:1100]
        return trio.current_time() - start

    took = run(source, body, deadline=30)  # the default deadline
    assert source.requests == 21
    assert 5 < took < 20  # capped backoff: 20 delays of at most 0.1, 0.2, 0.4, 0.8, then 1 s


def test_a_lasting_outage_fails_at_the_deadline_not_before():
    source = FakeSource(data_of(4 * BS))
    source.fail = 10 ** 6

    async def body(reader, image):
        start = trio.current_time()
        with pytest.raises(BackendUnavailable):
            await reader.read(image, 0, 10)
        return trio.current_time() - start

    took = run(source, body)
    assert DEADLINE - 2.0 < took <= DEADLINE + 0.01  # the last delay may not fit
    assert source.requests > 5


def test_a_stalled_request_fails_at_the_deadline_and_a_later_read_starts_a_new_fetch():
    data = data_of(4 * BS)
    source = FakeSource(data)
    source.stall()

    async def body(reader, image):
        start = trio.current_time()
        with pytest.raises(BackendUnavailable):
            await reader.read(image, 0, 10)
        assert trio.current_time() - start == pytest.approx(DEADLINE, abs=0.01)
        source.release()  # the service recovers; the stalled thread is still out
        await trio.sleep(FAILURE_GRACE)
        start = trio.current_time()
        assert await reader.read(image, 0, 10) == data[:10]
        return trio.current_time() - start

    took = run(source, body)
    assert took < 0.1  # a new fetch, not a wait on the one that hung
    assert source.requests == 2


def test_the_kernels_immediate_reread_of_a_failed_block_fails_at_once():
    # A failed readahead is re-issued at once as a synchronous read of one page:
    # it must not wait a second deadline.
    source = FakeSource(data_of(4 * BS))
    source.stall()

    async def body(reader, image):
        start = trio.current_time()
        with pytest.raises(BackendUnavailable):
            await reader.read(image, 0, 4 * BS)  # the readahead
        with pytest.raises(BackendUnavailable):
            await reader.read(image, 4096, 4096)  # the kernel's re-read
        return trio.current_time() - start

    took = run(source, body)
    assert took <= DEADLINE + 0.5


def test_without_the_grace_a_reread_of_a_failed_block_fetches_it_again():
    # An O_DIRECT reader's re-read is the application's, not the kernel's: once the
    # service is back it gets its bytes, though the block failed a moment ago.
    data = data_of(4 * BS)
    source = FakeSource(data)
    source.stall()

    async def body(reader, image):
        with pytest.raises(BackendUnavailable):
            await reader.read(image, 0, 10, grace=False)
        source.release()
        start = trio.current_time()
        assert await reader.read(image, 0, 10, grace=False) == data[:10]
        return trio.current_time() - start

    assert run(source, body) < FAILURE_GRACE


def test_a_reader_with_time_left_fetches_again_when_an_earlier_readers_fetch_fails():
    data = data_of(4 * BS)
    source = FakeSource(data)
    source.stall()

    async def body(reader, image):
        got = {}

        async def first():
            with pytest.raises(BackendUnavailable):
                await reader.read(image, 0, 10)
            got["first"] = trio.current_time()

        async def second():
            await trio.sleep(3)
            got["data"] = await reader.read(image, 5, 10)
            got["second"] = trio.current_time()

        async def recover():
            await trio.sleep(6)
            source.release()

        async with trio.open_nursery() as n:
            n.start_soon(first)
            n.start_soon(second)
            n.start_soon(recover)
        return got

    got = run(source, body)
    assert got["first"] == pytest.approx(DEADLINE, abs=0.01)
    assert got["data"] == data[5:15]
    assert got["second"] < 3 + DEADLINE


def test_readers_of_a_stream_that_keeps_resetting_get_their_blocks_by_ranged_reads():
    data = data_of(64 * BS)
    source = FakeSource(data)
    source.reset_after, source.reset_count = 2 * BS + 100, 10 ** 6  # every body resets

    async def body(reader, image):
        out = bytearray()
        for offset in range(0, len(data), 16 * KiB):  # a sequential reader
            reader.prefetch(image, offset, offset + 8 * BS)
            out += await reader.read(image, offset, 16 * KiB)
        return bytes(out), trio.current_time()

    out, elapsed = run(source, body)
    assert out == data  # no error, no wrong byte
    assert elapsed < DEADLINE


def test_a_torn_response_is_fetched_again_never_served():
    data = data_of(8 * BS)
    source = FakeSource(data)
    source.short_count = 3

    async def body(reader, image):
        assert await reader.read(image, 0, 3 * BS) == data[:3 * BS]
        reader.prefetch(image, 3 * BS, 8 * BS)
        assert await reader.read(image, 3 * BS, 5 * BS) == data[3 * BS:]

    run(source, body)


def test_an_abandoned_stream_costs_at_most_what_was_asked_for():
    data = data_of(256 * BS)
    source = FakeSource(data)

    async def body(reader, image):
        reader.prefetch(image, 0, 8 * BS)
        await reader.read(image, 0, 10)
        await trio.sleep(1)  # the reader went away

    run(source, body)
    assert source.sent == 8 * BS
    assert all(end is not None and end <= 8 * BS for _, end in source.log)


def test_a_store_that_refuses_ranges_is_read_by_one_stream_that_every_reader_waits_for():
    data = data_of(64 * BS + 5)
    source = FakeSource(data, ranges=False)

    async def body(reader, image):
        rng = random.Random(9)
        reads = [(rng.randrange(len(data)), rng.randrange(1, 3 * BS)) for _ in range(100)]
        results = {}

        async def one(i, offset, length):
            results[i] = (await reader.read(image, offset, length), offset, length)
        async with trio.open_nursery() as n:
            for i, (offset, length) in enumerate(reads):
                n.start_soon(one, i, offset, length)
        for got, offset, length in results.values():
            assert got == data[offset:offset + length]
        return reader.stats["streams"]

    streams = run(source, body)
    assert streams == 1
    assert source.sent == len(data)  # the image once, however many readers
    assert source.requests - source.ranged_requests == 1


def test_a_reader_behind_the_stream_from_the_start_waits_for_its_next_pass():
    data = data_of(32 * BS)
    source = FakeSource(data, ranges=False)

    async def body(reader, image):
        assert await reader.read(image, 20 * BS, 10) == data[20 * BS:][:10]
        # block 0 went by long ago and is no longer in memory (2-block memory tier)
        assert await reader.read(image, 0, 10) == data[:10]

    run(source, body, memory=2 * BS)
    assert source.requests - source.ranged_requests == 2


def _run_direct(bad: FakeSource, good: FakeSource, body):
    """A BlockReader whose direct source is ``bad`` (kind rbd) until it is distrusted."""
    bad.kind = "rbd"
    data = good.data
    image = ImageRef("img", "v1", len(data), "sha256", hashlib.sha256(data).hexdigest())
    opened = []

    def open_source(_, direct):
        opened.append(direct)
        return bad if direct else good

    async def main():
        async with trio.open_nursery() as nursery:
            reader = BlockReader(open_source, TieredCache(MemoryCache(8 * MiB), None),
                                 block_size=BS, fetch_threads=4, read_deadline=DEADLINE,
                                 retry=RetryPolicy(deadline=DEADLINE), nursery=nursery)
            try:
                return await body(reader, image)
            finally:
                nursery.cancel_scope.cancel()

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.02)), opened


def test_a_whole_read_from_a_direct_source_that_matches_its_hash_stays_direct(caplog):
    data = data_of(8 * BS + 3)

    async def body(reader, image):
        assert await reader.read(image, 0, len(data)) == data
        await trio.sleep(1)  # the check runs in the background
        assert await reader.read(image, 0, 10) == data[:10]

    with caplog.at_level("INFO"):
        _, opened = _run_direct(FakeSource(data), FakeSource(data), body)
    assert opened == [True]
    assert "match its sha256" in caplog.text


def test_direct_bytes_that_fail_the_image_hash_are_dropped_and_read_through_the_service(
        caplog):
    data = data_of(8 * BS + 3)
    wrong = bytearray(data)
    wrong[5 * BS + 17] ^= 1

    async def body(reader, image):
        await reader.read(image, 0, len(data))  # whole: the check follows
        await trio.sleep(1)
        return await reader.read(image, 0, len(data))

    with caplog.at_level("INFO"):
        again, opened = _run_direct(FakeSource(bytes(wrong)), FakeSource(data), body)
    assert again == data  # dropped, then fetched from the service
    assert opened == [True, False]
    assert "DO NOT MATCH" in caplog.text


@pytest.mark.parametrize("when", ["caught-up", "at-close"])
def test_streamed_blocks_a_slow_cache_disk_had_no_room_for_reach_it_from_memory(
        tmp_path, monkeypatch, when):
    """The stream never waits for the disk tier's writers: the blocks they had no
    room for are offered again from the memory tier once they have emptied their
    queue, and whatever is still behind when the reader closes is written then."""
    monkeypatch.setattr(disk_module, "QUEUED", 2 * BS)
    data = data_of(48 * BS)
    source = FakeSource(data)
    disk = DiskCache(tmp_path / "c", 64 * MiB, writers=1)
    real_store_run = disk.store_run

    def slow_store_run(run):  # a cache disk far slower than the network
        time.sleep(0.003 * len(run))
        real_store_run(run)
    disk.store_run = slow_store_run

    async def body(reader, image):
        reader.prefetch(image, 0, len(data))
        assert await reader.read(image, 0, len(data)) == data
        deferred = reader.stats["disk_deferred"]
        if when == "caught-up":
            for _ in range(400):
                if not reader._unwritten:
                    break
                await trio.sleep(0.05)
            assert not reader._unwritten
        reader.close()
        return deferred, dict(reader.stats)

    deferred, stats = run(source, body, disk=disk)
    disk.close()
    assert deferred > 0  # the writers did fall behind
    assert stats["disk_missed"] == 0
    assert source.sent == len(data)  # nothing was fetched twice
    again = DiskCache(tmp_path / "c", 64 * MiB)
    for i in range(48):
        assert again.load(BlockKey("img", "v1", BS, i)) == data[i * BS:(i + 1) * BS], i


def test_blocks_a_page_cached_reader_got_whole_leave_the_memory_tier(tmp_path):
    """The kernel keeps them; a part of a block, an O_DIRECT reader's blocks, and
    blocks the disk tier is behind on stay."""
    data = data_of(8 * BS)
    source = FakeSource(data)

    async def body(reader, image):
        assert await reader.read(image, 0, 2 * BS, paged=True) == data[:2 * BS]
        assert await reader.read(image, 2 * BS, 10, paged=True) == data[2 * BS:2 * BS + 10]
        assert await reader.read(image, 3 * BS, BS) == data[3 * BS:4 * BS]  # O_DIRECT
        reader._unwritten[reader.key(image, 4)] = False  # the disk tier is behind on it
        assert await reader.read(image, 4 * BS, BS, paged=True) == data[4 * BS:5 * BS]
        return [reader.cache.in_memory(reader.key(image, i)) for i in range(5)]

    assert run(source, body) == [False, False, True, True, True]
