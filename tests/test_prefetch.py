"""The prefetcher's idea of sequential, and the batches it asks for."""

from imagefs.prefetch import Prefetcher

KiB, MiB = 1 << 10, 1 << 20


def sequential(p, start, count, size):
    """Feed ``count`` reads of ``size`` from ``start``; returns the ranges asked for."""
    asked = []
    for i in range(count):
        lo, hi = p.on_read(start + i * size, size)
        if hi > lo:
            asked.append((lo, hi))
        # what has been asked for always runs at least half a window ahead
        assert p.ahead - p.frontier >= p.window // 2 or p.window == 0
    return asked


def test_window_grows_while_sequential_and_resets_on_seek():
    p = Prefetcher(block_size=MiB, max_window=16 * MiB)
    assert p.on_read(0, 128 * KiB) == (128 * KiB, 128 * KiB)  # first read: nothing
    asked = sequential(p, 128 * KiB, 200, 128 * KiB)
    assert p.window == 16 * MiB
    # batches: contiguous, never overlapping, far fewer than reads
    for (_, hi), (lo, _) in zip(asked, asked[1:]):
        assert hi == lo
    assert 3 <= len(asked) <= 200 // 8
    assert asked[-1][1] - asked[-1][0] >= 8 * MiB  # big batches once the window is wide
    start, end = p.on_read(900 * MiB, 4096)  # a seek
    assert start == end and p.window == 0
    # sequential again from there: asked for once a block's worth was read
    asked = sequential(p, 900 * MiB + 4096, 300, 4096)
    assert asked[0] == (900 * MiB + MiB, 900 * MiB + MiB + 4 * MiB)


def test_a_few_small_reads_in_one_block_ask_for_nothing():
    # qemu-img info on a qcow2, through the kernel's readahead: 3 reads, 84 KiB
    p = Prefetcher(block_size=MiB, max_window=64 * MiB)
    assert sequential(p, 0, 3, 28 * KiB) == []
    assert p.window == 0


def test_interleaved_requests_in_flight_count_as_sequential():
    p = Prefetcher(block_size=MiB, max_window=64 * MiB)
    p.on_read(0, 64 * KiB)
    # qemu: 8 requests of 64 KiB in flight, arriving out of order
    order = [3, 1, 2, 0, 7, 5, 6, 4, 11, 9, 10, 8, 15, 13, 14, 12]
    for n in order:
        p.on_read((1 + n) * 64 * KiB, 64 * KiB)
        assert p.start == 0  # one sequence, never restarted
    assert p.window > 4 * MiB


def test_random_reads_never_prefetch():
    p = Prefetcher(block_size=MiB, max_window=64 * MiB)
    for offset in (0, 5000 * MiB, 17 * MiB, 3000 * MiB, 100 * MiB):
        start, end = p.on_read(offset, 4096)
        assert start == end
