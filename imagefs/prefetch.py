"""Sequential detection and the readahead window.

This module alone decides whether reads are sequential.  One ``Prefetcher``
follows one open file.  Its ``frontier`` is the furthest end any read has
reached; a read that starts near the frontier (within ``slack``, behind or
ahead) continues the sequence, so the interleaved offsets of a reader with
several requests in flight (qemu keeps up to 8) still count as sequential.
While reads stay sequential the window doubles, from two blocks up to
``max_window``; a read elsewhere (a seek) resets it to nothing.
"""

from __future__ import annotations


class Prefetcher:
    def __init__(self, block_size: int, max_window: int, slack: int | None = None):
        self.block_size = block_size
        self.max_window = max_window
        # qemu: 8 requests of up to 1 MiB in flight; the kernel: readahead batches.
        self.slack = slack if slack is not None else max(8 << 20, 2 * block_size)
        self.frontier: int | None = None
        self.window = 0

    def on_read(self, offset: int, size: int) -> tuple[int, int]:
        """Note a read; returns the byte range ``(start, end)`` worth fetching
        ahead of it (empty when the reads are not sequential)."""
        end = offset + size
        sequential = (self.frontier is not None
                      and self.frontier - self.slack <= offset <= self.frontier + self.slack)
        if sequential:
            self.window = min(max(2 * self.window, 2 * self.block_size), self.max_window)
            self.frontier = max(self.frontier, end)
        else:
            self.window = 0
            self.frontier = end
        if not self.window:
            return (end, end)
        return (self.frontier, self.frontier + self.window)
