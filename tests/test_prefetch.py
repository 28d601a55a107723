"""The prefetcher's idea of sequential, and the batches it asks for."""

import random

from imagefs.prefetch import Prefetcher

KiB, MiB = 1 << 10, 1 << 20


def sequential(p, start, count, size):
    """Feed ``count`` reads of ``size`` from ``start``; returns the ranges asked for."""
    asked = []
    for i in range(count):
        lo, hi = p.on_read(start + i * size, size)
        if hi > lo:
            asked.append((lo, hi))
            # a batch starts at or past the read, and never runs a window past it
            assert lo >= start + i * size and hi - (start + (i + 1) * size) <= p.window
    return asked


def test_nothing_is_asked_until_a_run_is_4_mib_long():
    p = Prefetcher(block_size=MiB, max_window=64 * MiB)
    asked = sequential(p, 0, 32, 128 * KiB)
    # at the read that made the run 4 MiB: one block (an eighth of the run is less)
    assert asked[0] == (4 * MiB, 5 * MiB)


def test_window_grows_to_its_ceiling_and_batches_are_contiguous():
    p = Prefetcher(block_size=MiB, max_window=16 * MiB)
    asked = sequential(p, 0, 2000, 128 * KiB)
    assert p.window == 16 * MiB
    for (_, hi), (lo, _) in zip(asked, asked[1:]):
        assert hi == lo
    assert len(asked) <= 2000 // 16  # far fewer batches than reads


def test_a_run_never_asks_ahead_more_than_an_eighth_of_its_length():
    p = Prefetcher(block_size=256 * KiB, max_window=64 * MiB)
    for i in range(4000):
        offset = i * 32 * KiB
        lo, hi = p.on_read(offset, 32 * KiB)
        if hi > lo:
            run = offset + 32 * KiB
            assert hi - run <= max(run // 8, 256 * KiB), (i, lo, hi)


def test_a_short_sequential_read_fetches_little_past_its_end():
    # dd of 16 MiB: the window grows only as fast as the reader consumes it.
    p = Prefetcher(block_size=MiB, max_window=64 * MiB)
    asked = sequential(p, 0, 128, 128 * KiB)
    assert max(hi for _, hi in asked) <= 20 * MiB


def test_a_seek_starts_a_new_run_that_must_grow_again():
    p = Prefetcher(block_size=MiB, max_window=64 * MiB)
    sequential(p, 0, 64, 128 * KiB)
    start, end = p.on_read(900 * MiB, 4096)
    assert start == end
    asked = sequential(p, 900 * MiB + 4096, 2000, 4096)
    assert asked[0][0] >= 904 * MiB


def test_a_few_small_reads_in_one_block_ask_for_nothing():
    # qemu-img info on a qcow2, through the kernel's readahead: 3 reads, 84 KiB
    p = Prefetcher(block_size=MiB, max_window=64 * MiB)
    assert sequential(p, 0, 3, 28 * KiB) == []


def test_requests_in_flight_out_of_order_make_one_run():
    p = Prefetcher(block_size=MiB, max_window=64 * MiB)
    # qemu: 8 requests of 512 KiB in flight, arriving out of order
    order = [3, 1, 2, 0, 7, 5, 6, 4, 11, 9, 10, 8, 15, 13, 14, 12]
    asked = []
    for n in order:
        lo, hi = p.on_read(n * 512 * KiB, 512 * KiB)
        if hi > lo:
            asked.append((lo, hi))
    assert len(p.runs) == 1 and (p.runs[0].start, p.runs[0].end) == (0, 8 * MiB)
    assert asked and asked[0][0] >= 4 * MiB


def test_random_reads_split_by_the_kernel_never_prefetch():
    # one 1 MiB pread reaches the mount as 8 requests of 128 KiB that touch
    p = Prefetcher(block_size=MiB, max_window=64 * MiB)
    rng = random.Random(7)
    for _ in range(200):
        offset = rng.randrange(0, 4096 * MiB)
        for part in range(8):
            start, end = p.on_read(offset + part * 128 * KiB, 128 * KiB)
            assert start == end
    assert len(p.runs) <= 8


def test_random_small_reads_never_prefetch():
    p = Prefetcher(block_size=MiB, max_window=64 * MiB)
    rng = random.Random(3)
    for _ in range(500):
        start, end = p.on_read(rng.randrange(0, 64 * MiB), 4096)
        assert start == end
