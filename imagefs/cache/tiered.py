"""The two tiers behind one interface: memory in front of disk.

``get``/``put`` are the memory tier and run on the trio thread.  The disk
tier's calls are blocking (``load``, ``load_run``, ``store``, and
``store_later`` with ``wait``: call them from worker threads; ``store_later``
without it only queues or turns away, and may run on the trio thread);
without a disk tier they miss and store nothing.  A disk fault is a miss,
never an error: ``DiskCache`` turns every ``OSError`` into one.

Write-behind: the disk tier never holds a stream up.  A streamed block its
writers had no room for (``store_later`` said so) is kept in the memory tier
for them (``write_behind``) and offered to them again once they have emptied
their queue (``catch_up``, run on the trio thread when the disk tier says it
has drained).  The memory tier is then not the page cache's double: a block
a page-cached reader got whole leaves it (``served_whole``), unless the disk
tier is still behind on it, in which case it leaves once written or given up.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import trio

from .disk import GROUP_BLOCKS, DiskCache
from .keys import BlockKey
from .memory import MemoryCache

log = logging.getLogger(__name__)


class TieredCache:
    def __init__(self, memory: MemoryCache, disk: DiskCache | None):
        self.memory, self.disk = memory, disk
        # Streamed blocks the disk tier's writers had no room for, offered again from
        # the memory tier when they have caught up; True once a page-cached reader
        # has had the block whole.
        self._unwritten: dict[BlockKey, bool] = {}
        self._drain_wired = False
        self.stats = {"disk_deferred": 0, "disk_missed": 0}

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

    # ---- write-behind (trio thread) ------------------------------------------------------
    @property
    def unwritten_blocks(self) -> int:
        """Streamed blocks the disk tier is behind on (``catch_up`` offers them again)."""
        return len(self._unwritten)

    def write_behind(self, key: BlockKey) -> None:
        """A streamed block, in the memory tier, that the disk tier had no room for:
        kept there for the writers, at most half the memory tier's worth of them (an
        older one is then given up: without that, a cold whole-image read the writers
        could not keep up with filled the memory tier with blocks already served)."""
        if not self._drain_wired:
            self._wire_drain()
        self.stats["disk_deferred"] += 1
        self._unwritten[key] = False
        if len(self._unwritten) > self.memory.max_bytes // 2 // key.block_size:
            oldest = next(iter(self._unwritten))
            if self._unwritten.pop(oldest):  # and a page-cached reader has had it
                self.memory.discard(oldest)
            self.stats["disk_missed"] += 1

    def _wire_drain(self) -> None:
        """Run ``catch_up`` on this trio thread whenever the disk's writers drain."""
        self._drain_wired = True
        if self.disk is None:
            return
        token = trio.lowlevel.current_trio_token()

        def drained() -> None:  # in a writer thread
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self.catch_up)
        self.disk.on_drained = drained

    def served_whole(self, key: BlockKey) -> None:
        """A page-cached reader got the block whole: the kernel keeps it, so it
        leaves the memory tier (once written, if the disk tier is behind on it)."""
        if key in self._unwritten:
            self._unwritten[key] = True
        else:
            self.memory.discard(key)

    def catch_up(self, wait: bool = False) -> None:
        """Offer the writers again the streamed blocks they had no room for, from the
        memory tier, until their queue is full again (``wait``: all of them, waiting
        for room).  A block the memory tier has evicted since is not on disk: a later
        read fetches it again."""
        while self._unwritten:
            key = next(iter(self._unwritten))
            data = self.memory.peek(key)
            if data is not None and not self.store_later(key, data, wait=wait):
                return
            if self._unwritten.pop(key):  # served: the page cache has it, the disk soon
                self.memory.discard(key)
            if data is None:
                self.stats["disk_missed"] += 1

    def write_behind_all(self) -> None:
        """Before the mount ends: queue for the disk tier everything it is behind on,
        waiting for room, and say what it missed."""
        if self._unwritten:
            log.info("writing up to %.0f MiB of streamed blocks to the disk cache before exit",
                     sum(k.block_size for k in self._unwritten) / 2**20)
            self.catch_up(wait=True)
        missed = self.stats["disk_missed"]
        if missed:
            log.info("the disk cache fell behind the network on %d streamed blocks and did "
                     "not write them: a later read fetches them again", missed)

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
