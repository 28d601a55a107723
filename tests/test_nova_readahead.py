"""The mount's readahead for O_DIRECT readers (qemu with cache=none, as Nova boots).

``direct_prefetcher`` stands in for the kernel's readahead, which O_DIRECT
readers do not get; the real boots that measure it are in test_nova_boot.py.
"""

from __future__ import annotations

from imagefs.prefetch import Prefetcher, direct_prefetcher

KiB = 1 << 10
BLOCK = 256 * KiB


def test_small_scattered_reads_ask_for_nothing():
    p = direct_prefetcher(BLOCK, 256 * KiB)
    for offset in (0, 10 << 20, 5 << 20, 40 << 20, (10 << 20) + 64 * KiB):
        start, end = p.on_read(offset, 16 * KiB)
        assert end == start


def test_a_large_read_asks_for_the_first_window_only():
    p = direct_prefetcher(BLOCK, 256 * KiB)
    assert p.on_read(1 << 20, 128 * KiB) == ((1 << 20) + 128 * KiB, (1 << 20) + 160 * KiB)


def test_a_read_that_continues_another_asks_for_as_much_as_the_run_up_to_the_window():
    p = direct_prefetcher(BLOCK, 256 * KiB)
    assert p.on_read(0, 16 * KiB) == (16 * KiB, 16 * KiB)  # 16 KiB: too short a run
    start, end = p.on_read(16 * KiB, 16 * KiB)  # continued: 32 KiB read, 32 KiB ahead
    assert (start, end) == (32 * KiB, 64 * KiB)
    windows, offset = [], 32 * KiB
    while offset < 4 << 20:
        start, end = p.on_read(offset, 32 * KiB)
        offset += 32 * KiB
        if end > start:
            assert end - offset <= offset  # never more ahead than the run has read
            windows.append(p.window)
    assert windows == sorted(windows) and windows[-1] == 256 * KiB  # doubling, capped


def test_a_gap_is_a_new_run_unlike_the_buffered_readahead():
    direct, buffered = direct_prefetcher(BLOCK, 256 * KiB), Prefetcher(BLOCK, 64 << 20)
    direct.on_read(0, 16 * KiB)
    assert direct.on_read(32 * KiB, 16 * KiB) == (48 * KiB, 48 * KiB)  # 16 KiB apart
    buffered.on_read(0, 16 * KiB)
    buffered.on_read(32 * KiB, 16 * KiB)
    assert len(buffered.runs) == 1 and len(direct.runs) == 2
