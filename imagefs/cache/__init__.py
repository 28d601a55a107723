"""The block cache: a memory tier over a disk tier.

Blocks are keyed by ``BlockKey``: the image's id *and version* (its
``os_hash_value``, else ``checksum``), the block size and the block's index.
An image uploaded again under the same id has another version, so its old
blocks are never served.  A fault in the disk tier (a missing, torn or
corrupt file) is a miss, never an error.  ``directory`` decides which
directory the disk tier may use (one it created, or tagged with a
``CACHEDIR.TAG``).

``TieredCache`` is used from the trio thread only; the disk tier's file I/O
runs in worker threads (``DiskCache.load``/``store`` are blocking, and the
caller offloads them), while its index is touched only on the trio side.
"""

from .keys import BlockKey
from .memory import MemoryCache
from .disk import DiskCache

__all__ = ["BlockKey", "MemoryCache", "DiskCache"]
