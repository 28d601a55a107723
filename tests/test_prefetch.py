"""The prefetcher's idea of sequential."""

from imagefs.prefetch import Prefetcher

MiB = 1 << 20


def test_window_grows_while_sequential_and_resets_on_seek():
    p = Prefetcher(block_size=MiB, max_window=16 * MiB)
    assert p.on_read(0, 128 << 10) == (128 << 10, 128 << 10)  # first read: no window
    windows = []
    for i in range(1, 8):
        start, end = p.on_read(i * (128 << 10), 128 << 10)
        windows.append(end - start)
    assert windows == sorted(windows) and windows[-1] == 16 * MiB
    start, end = p.on_read(900 * MiB, 4096)  # a seek
    assert start == end
    start, end = p.on_read(900 * MiB + 4096, 4096)  # sequential again from there
    assert end - start == 2 * MiB and start == 900 * MiB + 8192


def test_interleaved_requests_in_flight_count_as_sequential():
    p = Prefetcher(block_size=MiB, max_window=64 * MiB)
    p.on_read(0, 64 << 10)
    # qemu: 8 requests of 64 KiB in flight, arriving out of order
    order = [3, 1, 2, 0, 7, 5, 6, 4, 11, 9, 10, 8, 15, 13, 14, 12]
    resets = 0
    for n in order:
        start, end = p.on_read((1 + n) * (64 << 10), 64 << 10)
        resets += start == end
    assert resets == 0
    assert p.window > 2 * MiB


def test_random_reads_never_prefetch():
    p = Prefetcher(block_size=MiB, max_window=64 * MiB)
    for offset in (0, 5000 * MiB, 17 * MiB, 3000 * MiB, 100 * MiB):
        start, end = p.on_read(offset, 4096)
        assert start == end
