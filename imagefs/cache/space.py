"""The disk tier's free-space guard: ``min_free`` left free on the cache's filesystem,
and stores turned off while it is full or read-only.

Before a store, the free space (``statvfs``, read again at most once a
second and counted down by each store in between) is kept above the minimum
by evicting groups, least recently used first; with nothing left to evict
the store is skipped.  A store that fails with ENOSPC or EDQUOT evicts back
to the minimum and turns stores off; so does a store or a touch that fails
with EROFS (without evicting).  With stores off the cache serves what it
holds and stores nothing; every 30 s a store checks the filesystem again,
and stores resume if it is writable and has room.  The first turn off is
logged as a warning, later ones and each resumption at info.  A cache on a
read-only filesystem starts with stores off.

``SpaceGuard`` keeps the figures; the cache chooses what to evict.  Its
state is guarded by the cache's lock, which it is given: the methods marked
so run under it, ``stop_storing`` takes it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..config import FreeSpace

log = logging.getLogger("imagefs.cache.disk")  # the disk tier logs under one name

_STATVFS_EVERY = 1.0  # seconds between reads of the filesystem's free space
_RECHECK_EVERY = 30.0  # seconds between checks of a full or read-only cache filesystem
_now = time.monotonic
Victim = TypeVar("Victim")


class SpaceGuard:
    def __init__(self, root: Path, min_free: FreeSpace, lock: threading.Lock):
        self.root, self.min_free, self._lock = root, min_free, lock
        self._free = 0  # bytes free on the filesystem: statvfs's, less stores' since
        self._min_free_bytes = 0
        self._free_read_at = -math.inf
        self._pending = 0  # bytes of stores under way (not yet in statvfs's figure)
        self._off_until: float | None = None  # stores are off until a check then
        self._warned_off = False
        self._told_no_room = False

    def check_read_only(self) -> None:
        """Stores off if the cache's filesystem is mounted read-only (at open)."""
        try:
            read_only = os.statvfs(self.root).f_flag & os.ST_RDONLY
        except OSError:
            return
        if read_only:
            self.stop_storing("it is on a read-only filesystem")

    def freed(self, n: int) -> None:
        """``n`` bytes of blocks were evicted.  Under the lock."""
        self._free += n

    def done(self, need: int) -> None:
        """A store that ``make_room`` reserved ``need`` for is over.  Under the lock."""
        self._pending -= need

    def read_free(self) -> bool:
        """Read the filesystem's free space and minimum; whether it is writable.
        Under the lock."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return True  # keep the last figures
        self._free = st.f_bavail * st.f_frsize - self._pending
        self._min_free_bytes = self.min_free.of(st.f_blocks * st.f_frsize)
        self._free_read_at = _now()
        return not st.f_flag & os.ST_RDONLY

    def below_minimum(self) -> bool:
        """Under the lock."""
        return self._free < self._min_free_bytes

    def make_room(self, need: int,
                  evict_one: Callable[[], Victim | None]) -> tuple[bool, list[Victim]]:
        """Whether a store of ``need`` bytes may go ahead, and what ``evict_one`` (the
        cache's next victim, None when there is none) took out to keep ``min_free``.
        Reserves ``need``.  Under the lock."""
        now = _now()
        if self._off_until is not None:
            if now < self._off_until:
                return False, []
            writable = self.read_free()
            if not writable or self._free - need < self._min_free_bytes:
                self._off_until = now + _RECHECK_EVERY
                return False, []
            self._off_until = None
            log.info("disk cache %s: storing blocks again (%.1f MiB free)", self.root,
                     self._free / 2**20)
        elif now - self._free_read_at >= _STATVFS_EVERY:
            self.read_free()
        victims = []
        while self._free - need < self._min_free_bytes:
            victim = evict_one()
            if victim is None:
                if not self._told_no_room:
                    self._told_no_room = True
                    log.info("disk cache %s: its filesystem has under %s (%.1f MiB) free and "
                             "the cache nothing left to evict: not storing until it has room",
                             self.root, self.min_free, self._min_free_bytes / 2**20)
                return False, victims
            victims.append(victim)
        self._free -= need
        self._pending += need
        return True, victims

    def stop_storing(self, why: str) -> None:
        """Stores off until the next check; one warning for the first time, info after."""
        with self._lock:
            if self._off_until is not None:
                return
            self._off_until = _now() + _RECHECK_EVERY
            first, self._warned_off = not self._warned_off, True
        (log.warning if first else log.info)(
            "disk cache %s: %s; serving the blocks it holds and storing no new ones "
            "(checking again every %d s)", self.root, why, _RECHECK_EVERY)
