"""The two tiers behind one interface: memory in front of disk.

``get``/``put`` are the memory tier and run on the trio thread.  The disk
tier's calls are blocking (``load``, ``load_run``, ``store``, and
``store_later`` with ``wait``: call them from worker threads; ``store_later``
without it only queues or turns away, and may run on the trio thread);
without a disk tier they miss and store nothing.  A disk fault is a miss,
never an error: ``DiskCache`` turns every ``OSError`` into one.
"""

from __future__ import annotations

from collections.abc import Iterator

from .disk import GROUP_BLOCKS, DiskCache
from .keys import BlockKey
from .memory import MemoryCache


class TieredCache:
    def __init__(self, memory: MemoryCache, disk: DiskCache | None):
        self.memory, self.disk = memory, disk

    # ---- memory (trio thread) -------------------------------------------------
    def get(self, key: BlockKey) -> bytes | None:
        return self.memory.get(key)

    def put(self, key: BlockKey, data: bytes) -> None:
        self.memory.put(key, data)

    def in_memory(self, key: BlockKey) -> bool:
        return key in self.memory

    # ---- disk (worker threads; ``on_disk`` is a cheap index lookup) -------------
    def on_disk(self, key: BlockKey) -> bool:
        return self.disk is not None and key in self.disk

    @staticmethod
    def same_run(a: BlockKey, b: BlockKey) -> bool:
        """Whether two blocks of an image can be loaded in one run (one group file)."""
        return a.index // GROUP_BLOCKS == b.index // GROUP_BLOCKS

    def load(self, key: BlockKey) -> bytes | None:
        return self.disk.load(key) if self.disk is not None else None

    def load_run(self, keys: list[BlockKey]) -> Iterator[bytes | None]:
        """Consecutive blocks of one group, each as soon as it is read; None for a miss."""
        if self.disk is None:
            return iter([None] * len(keys))
        return self.disk.iter_run(keys)

    def store(self, key: BlockKey, data: bytes) -> None:
        if self.disk is not None:
            self.disk.store(key, data)

    def store_run(self, run: list[tuple[BlockKey, bytes]]) -> None:
        """``store`` for consecutive blocks of one group, with one write."""
        if self.disk is not None:
            self.disk.store_run(run)

    def store_later(self, key: BlockKey, data: bytes, *, wait: bool = False) -> bool:
        """Queue for the disk's writer threads; False if their queue is full
        (``DiskCache.store_later``)."""
        return self.disk is None or self.disk.store_later(key, data, wait=wait)

    def discard_image(self, key: BlockKey) -> int:
        """Forget every block of ``key``'s image, in both tiers.  Blocking (the disk's
        files are removed); call the memory side on the trio thread first with
        ``discard_from_memory``."""
        return self.disk.discard_image(key) if self.disk is not None else 0

    def discard_from_memory(self, image_id: str) -> None:
        self.memory.discard_image(image_id)

    # ---- what is in use (cheap; callable on the trio thread) ------------------------
    def hold(self, key: BlockKey) -> None:
        """``key``'s image has an open ``data`` file: the disk tier evicts its blocks
        only when nothing else is left (``DiskCache.hold``)."""
        if self.disk is not None:
            self.disk.hold(key)

    def unhold(self, key: BlockKey) -> None:
        if self.disk is not None:
            self.disk.unhold(key)

    def keep_last(self, key: BlockKey, indices) -> None:
        """Blocks of ``key``'s image the disk tier evicts after its others."""
        if self.disk is not None:
            self.disk.keep_last(key, indices)

    def describe(self, key: BlockKey, **about) -> None:
        """The image's name, size and visibility, for the disk tier's index."""
        if self.disk is not None:
            self.disk.describe(key, **about)

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()
