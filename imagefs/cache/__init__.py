"""The block cache: a memory tier over a disk tier.

Blocks are keyed by ``BlockKey``: the image's id *and version* (its
``os_hash_value``, else ``checksum``), the block size and the block's index.
An image uploaded again under the same id has another version, so its old
blocks are never served.  A fault in the disk tier (a missing, torn or
corrupt file) is a miss, never an error.  ``directory`` decides which
directory the disk tier may use (one it created, or tagged with a
``CACHEDIR.TAG``).

``TieredCache`` puts both behind one interface: its memory calls run on the
trio thread, its disk calls are blocking and run in worker threads.

The disk tier, one job per module: ``disk`` (``DiskCache``: composes the
rest), ``index`` (slots, LRU order, eviction ranks), ``groupfile`` (the file
format and ``O_DIRECT`` writes), ``writers`` (the writer threads and their
queue), ``space`` (the free-space guard), ``scan`` (the index rebuilt at
open), ``inventory`` (which images a cache holds), ``directory`` (which
directory may be a cache).
"""

from .keys import BlockKey
from .memory import MemoryCache
from .disk import DiskCache
from .tiered import TieredCache

__all__ = ["BlockKey", "MemoryCache", "DiskCache", "TieredCache"]
