"""Ranged runs: warm-ups, the one ranged read's refusal, and runs loaded from disk,
against the fault-injecting source on trio's MockClock (``test_blocks.run``)."""

from __future__ import annotations

import shutil

import pytest
import trio
from fake_source import FakeSource
from test_blocks import BS, DEADLINE, data_of, run

from imagefs.cache import DiskCache


def test_a_failed_warm_up_leaves_no_failure_for_readers():
    data = data_of(8 * BS)
    source = FakeSource(data)
    source.fail = 10 ** 6

    async def body(reader, image):
        figures = await reader.warm(image, [(0, len(data))])
        source.fail = 0  # the service is back at once
        start = trio.current_time()
        assert await reader.read(image, 0, BS) == data[:BS]  # not the warm-up's failure
        return figures, trio.current_time() - start

    figures, took = run(source, body)
    assert figures["failed"] == 8 and figures["fetched"] == 0
    assert took < 0.1


def test_a_warm_up_of_a_store_that_refuses_ranges_hands_its_blocks_to_the_stream():
    data = data_of(40 * BS + 3)
    source = FakeSource(data, ranges=False)

    async def body(reader, image):
        figures = await reader.warm(image, [(0, len(data))])
        state = reader.images.get(image.id)
        assert state.no_ranges
        for offset in range(0, len(data), 7 * BS):  # everything comes from one stream
            assert await reader.read(image, offset, BS) == data[offset:offset + BS]
        return figures, reader.stats["streams"]

    figures, streams = run(source, body)
    assert figures["failed"] == 0 and streams == 1
    assert source.requests - source.ranged_requests == 1  # one pass from the start
    assert source.sent <= len(data)  # (the test may end before the pass does)


def test_a_warm_up_retries_within_its_deadline():
    data = data_of(4 * BS)
    source = FakeSource(data)
    source.fail = 3

    async def body(reader, image):
        figures = await reader.warm(image, [(0, len(data))])
        return figures, reader.stats["retries"], trio.current_time()

    figures, retries, took = run(source, body)
    assert figures["fetched"] == len(data) and retries == 3 and took < DEADLINE


@pytest.mark.parametrize("gone", [False, True])
def test_a_disk_run_is_loaded_ahead_of_a_reader_and_fetched_again_if_gone(tmp_path, gone):
    data = data_of(12 * BS)
    source = FakeSource(data)
    disk = DiskCache(tmp_path / "c", 64 << 20)

    async def body(reader, image):
        await reader.warm(image, [(0, len(data))])
        sent = source.sent
        if gone:  # the files go behind its back; its index still says they are there
            for path in (tmp_path / "c" / "blocks").iterdir():
                shutil.rmtree(path)
        reader.prefetch(image, 0, len(data))
        assert await reader.read(image, 0, len(data)) == data
        return source.sent - sent, reader.stats["disk_hits"]

    fetched, disk_hits = run(source, body, disk=disk)
    disk.close()
    assert (fetched, disk_hits) == ((len(data), 0) if gone else (0, 12))
