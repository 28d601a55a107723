"""Sequential detection and the readahead window.

This module alone decides whether reads are sequential.  One ``Prefetcher``
follows one open file (``direct_prefetcher``: one opened ``O_DIRECT``).  It keeps a few **runs**: byte ranges that reads have
covered without a gap (``GAP`` at most).  A read that touches a run extends
it, and merges runs it joins, so requests that arrive out of order (qemu
keeps up to 8 in flight; the kernel splits one read into several requests)
still make one run.  A read that touches none starts a run of its own; the
least recently extended run is forgotten beyond ``RUNS``.

Nothing is asked for until a run is ``min_run`` long (4 MiB, or 4 blocks if
larger).  That is what keeps random access cheap: one ``pread`` of 1 MiB
reaches the mount as several requests that touch each other, and a window
opened for it would fetch blocks that nobody reads.  Past ``min_run``, the
run asks for data ahead of its end in batches: only when what it has asked
for (``ahead``) is less than half a window past its end does it ask again,
for a full window.  The window starts at 4 blocks and doubles with each
batch, up to ``max_window``, so it grows only as fast as the reader
consumes it; and it is never more than ``AHEAD_SHARE`` of the run so far,
so that a run that stops (a file of the guest's, read to its end) leaves
at most that share of it fetched for nothing.  In a replay of a guest's
boot (its 2,386 reads of the backing file, 89 MB, on 256 KiB blocks) a
share of 1/4 took what the mount fetched from 142 to 127 MB, 1/8 to 122 MB;
with no prefetch at all it was 122 MB.  A long sequential read reaches the
full window once it has read eight of them.
"""

from __future__ import annotations

import dataclasses

#: Bytes between two reads that still count as one run (pages the kernel
#: already had need not be read again).
GAP = 128 << 10
#: Runs followed at once per open file.
RUNS = 8
#: The most a run asks for ahead of its end, as a share of its length.
AHEAD_SHARE = 0.125
#: How long a run of O_DIRECT reads (one read, or reads with no gap between
#: them) is before it asks for readahead; also its first window.
DIRECT_MIN_RUN = 32 << 10


@dataclasses.dataclass
class _Run:
    start: int
    end: int
    window: int = 0
    ahead: int = 0   # the end of what has been asked for so far


class Prefetcher:
    """``min_run``, ``first`` (the first window), ``share`` (of the run, at most
    ahead of it) and ``gap`` default to the mount's readahead described above;
    ``direct_prefetcher`` sets them otherwise."""

    def __init__(self, block_size: int, max_window: int, min_run: int | None = None, *,
                 first: int | None = None, share: float = AHEAD_SHARE, gap: int = GAP):
        self.block_size = block_size
        self.max_window = max(max_window, block_size)
        self.min_run = min_run if min_run is not None else max(4 << 20, 4 * block_size)
        self.first = first if first is not None else 4 * block_size
        self.floor = min(self.first, block_size)  # the share's cap goes no lower
        self.share, self.gap = share, gap
        self.runs: list[_Run] = []  # least recently extended first

    def on_read(self, offset: int, size: int) -> tuple[int, int]:
        """Note a read; returns the byte range ``(start, end)`` to fetch ahead of it
        now (empty when nothing is due)."""
        end = offset + size
        run = self._extend(offset, end)
        if run.end - run.start < self.min_run:
            return (end, end)
        if run.window and run.ahead - run.end >= run.window // 2:
            return (end, end)
        run.window = min(max(2 * run.window, self.first), self.max_window,
                         max(int((run.end - run.start) * self.share), self.floor))
        start = max(run.ahead, run.end)
        run.ahead = run.end + run.window
        return (start, run.ahead)

    def _extend(self, start: int, end: int) -> _Run:
        touching = [r for r in self.runs
                    if r.start - self.gap <= end and start <= r.end + self.gap]
        if not touching:
            run = _Run(start, end, ahead=end)
            self.runs.append(run)
            if len(self.runs) > RUNS:
                del self.runs[0]
            return run
        run = max(touching, key=lambda r: r.end - r.start)  # the longest keeps its window
        for other in touching:
            if other is not run:
                self.runs.remove(other)
                run.ahead = max(run.ahead, other.ahead)
        run.start = min([start] + [r.start for r in touching])
        run.end = max([end] + [r.end for r in touching])
        run.ahead = max(run.ahead, run.end)
        self.runs.remove(run)
        self.runs.append(run)
        return run

    @property
    def window(self) -> int:
        """The window of the run read last (0 when none has asked for anything)."""
        return self.runs[-1].window if self.runs else 0


def direct_prefetcher(block_size: int, window: int) -> Prefetcher:
    """The readahead of files opened ``O_DIRECT``, which the kernel does not read
    ahead of: qemu with ``cache=none`` (as Nova boots guests) opens its backing
    file so, and each of its reads reaches the mount alone.  It does what the
    kernel's readahead does for a buffered reader (``--kernel-readahead``,
    ``window``): once a run of reads with no gap between them has 32 KiB, the
    bytes after it are fetched in the background, 32 KiB first, then twice as
    much at each batch, never more than the run has read, up to ``window``.
    So a file the guest reads through has its next block on the way while
    qemu works on this one, and a run that stops leaves no more fetched for
    nothing than the kernel's readahead would."""
    window = max(window, 4 << 10)
    return Prefetcher(block_size, window, min_run=DIRECT_MIN_RUN, first=DIRECT_MIN_RUN,
                      share=1.0, gap=0)
