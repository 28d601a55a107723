"""The daemon keeps the memory it frees, for the next block.

Every block read passes through a fresh buffer of block size: a
chunk off the network, a slot read from the disk tier.  With glibc's
defaults such a buffer gets an ``mmap`` of its own until the first one is
freed; after that they come from the heap, but whatever lies free at the top
of a heap beyond twice the block size goes back to the kernel.  Either way
blocks keep landing in pages the process has not touched before, and on
virtual machines that report freed pages to the host, touching new pages is
several times slower than touching pages already touched.  So the daemon
asks malloc to serve block-sized buffers from its heap and to keep up to the
memory cache's size of freed memory there: the memory cache's evicted blocks
become the next blocks' buffers.  Peak RSS grows a little: the heap keeps
what it once held.

One arena rather than one per thread: a block is allocated in one thread (a
stream's, a worker's) and freed in another (the trio thread, on eviction),
and freed memory stays in the arena it came from; with one arena the heap
holds at most the blocks alive at once, not that many per arena.  The arena
lock costs little: the daemon's threads take the GIL for every allocation of
this size anyway.

The threshold is 8 blocks, and 8 MiB at least: well above the largest
buffer the daemon reads into (a block; a piece of an RBD stream, which
librados receives into a buffer of the piece's size plus a header).  A
threshold just at a read's size would put each such buffer over it by its
header, and so give each an ``mmap`` of fresh pages and a ``munmap``.  A
setting also turns off glibc's own raising of the threshold.

The measurements are in docs/performance.md ("Figures moved out of the
code").

Only glibc has ``mallopt``; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

#: The largest value glibc takes for M_MMAP_THRESHOLD on 64-bit (32 MiB).
_MMAP_THRESHOLD_MAX = 32 << 20


def keep_freed_memory(block_size: int, keep: int) -> bool:
    """Serve buffers up to 8 blocks (8 MiB at least) from the heap, and let up to
    ``keep`` bytes of freed memory stay there.  Call it before the daemon starts threads.
    Returns whether malloc took the settings."""
    try:  # the C library already loaded (as disk.py's prctl): no ldconfig run at start-up
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    threshold = min(max(8 * block_size, 8 << 20), _MMAP_THRESHOLD_MAX)
    keep = min(max(keep, 4 * threshold), 2**31 - 1)  # a tiny memory cache: still no churn
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, 1),
        (M_MMAP_THRESHOLD, threshold),
        (M_TRIM_THRESHOLD, keep),
    ))
    if ok:
        log.debug("malloc: buffers under %d MiB from the heap; keeping up to %d MiB freed",
                  threshold >> 20, keep >> 20)
    else:
        log.info("malloc refused a setting: freed block memory goes back to the kernel")
    return ok
