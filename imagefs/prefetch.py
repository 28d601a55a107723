"""Sequential detection and the readahead window.

This module alone decides whether reads are sequential.  One ``Prefetcher``
follows one open file.  Its ``frontier`` is the furthest end any read has
reached; a read that starts near the frontier (within ``slack``, behind or
ahead) continues the sequence, so the interleaved offsets of a reader with
several requests in flight (qemu keeps up to 8) still count as sequential.
While reads stay sequential the window doubles, from four blocks up to
``max_window``; a read elsewhere (a seek) resets it to nothing.  Nothing is
asked for until the sequence has covered a block: the kernel's readahead
turns a few small metadata reads (``qemu-img info`` on a qcow2: three reads,
84 KiB, all in the first block) into a short sequence, and a stream opened
for it would fetch data that nobody reads.

It asks for data ahead in batches: only when what has already been asked
for (``ahead``) runs less than half a window past the frontier does it ask
again, for everything up to a full window ahead.  So fetches are few and
large instead of one block at a time behind each read.
"""

from __future__ import annotations


class Prefetcher:
    def __init__(self, block_size: int, max_window: int, slack: int | None = None):
        self.block_size = block_size
        self.max_window = max_window
        # qemu: 8 requests of up to 1 MiB in flight; the kernel: readahead batches.
        self.slack = slack if slack is not None else max(8 << 20, 2 * block_size)
        self.frontier: int | None = None
        self.start = 0  # where the current sequence began
        self.window = 0
        self.ahead = 0  # the end of what has been asked for so far

    def on_read(self, offset: int, size: int) -> tuple[int, int]:
        """Note a read; returns the byte range ``(start, end)`` to fetch ahead
        of it now (empty when nothing is due or the reads are not sequential)."""
        end = offset + size
        sequential = (self.frontier is not None
                      and self.frontier - self.slack <= offset <= self.frontier + self.slack)
        if not sequential:
            self.window, self.frontier, self.ahead, self.start = 0, end, end, offset
            return (end, end)
        self.frontier = max(self.frontier, end)
        self.start = min(self.start, offset)
        if self.frontier - self.start < self.block_size:
            self.ahead = max(self.ahead, self.frontier)
            return (self.ahead, self.ahead)
        self.window = min(max(2 * self.window, 4 * self.block_size), self.max_window)
        if self.ahead - self.frontier >= self.window // 2:
            return (self.ahead, self.ahead)
        start = max(self.ahead, self.frontier)
        self.ahead = self.frontier + self.window
        return (start, self.ahead)
