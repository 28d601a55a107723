"""The disk tier: blocks in group files under ``<cache dir>/blocks``, LRU-bounded.

``DiskCache`` keeps the index (which slots exist, the groups in
least-recently-used order, the eviction ranks: ``index.py``) and composes
the rest of the tier, each in a module of its own:

- ``groupfile.py``: the group-file format, and the aligned ``O_DIRECT`` writes;
- ``writers.py``: the writer threads behind ``store_later`` and their queue;
- ``space.py``: the free-space guard (``min_free``; stores off while the
  filesystem is full or read-only);
- ``inventory.py``: which image directories exist and their index files;
- ``directory.py``: which directory may be a cache (``claim``).

The index is rebuilt when the cache opens from each group's trailer and its
file's mtime.  A hit touches its group's mtime if it is more than a minute
old; a touch that fails is logged at debug and the hit served.  Directories
the cache creates are 0700 and its files 0600: only the mount's user reads
them.  Two bounds: ``max_bytes`` of blocks, and ``min_free`` left free on
the cache's filesystem (``space.py``).

``evict_dirs`` (``imagefs cache evict`` and ``purge``) removes whole image
directories whatever holds them: the operator asked.  A store under way
into a directory that is removed meanwhile is not indexed (each directory
has an epoch, bumped by ``evict_dirs``); a block it wrote anyway is valid
and found by the next scan.

The root is claimed first (``directory.claim``: tagged with a
``CACHEDIR.TAG``, or refused); the cache cleans up only inside
``<root>/blocks``: entries of an older layout, empty group files, and a
directory where a group file belongs (at the scan, or when a store meets
it; the block is then stored).

All methods are thread-safe and blocking: call them from worker threads.
``store_later`` queues a block for the cache's own writer threads
(``writers.py``); a block that finds the queue full is not queued, and its
caller may offer it again once the writers have emptied the queue: they
call ``on_drained`` then.  ``close`` writes what is queued before the mount
exits.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ..config import FreeSpace
from ..errors import ConfigError
from . import groupfile
from .directory import claim
from .groupfile import ALIGN, GROUP_BLOCKS, BlockWriter, image_dir, locate
from .index import GroupIndex, Where
from .inventory import CachedImage, Inventory
from .keys import BlockKey
from .scan import scan
from .space import SpaceGuard
from .writers import QUEUED, WRITER_NICE, WRITERS, WriteQueue

__all__ = ["DiskCache", "GROUP_BLOCKS", "QUEUED", "WRITERS", "WRITER_NICE"]

log = logging.getLogger(__name__)


class DiskCache:
    """The disk tier in ``root``, bounded by ``max_bytes`` of blocks and by ``min_free``
    (none by default) left free on its filesystem.  Raises ``ConfigError`` for a root
    that is not, or cannot be made, an imagefs cache directory."""

    def __init__(self, root: str | os.PathLike, max_bytes: int, *, direct: bool = True,
                 writers: int = WRITERS, min_free: FreeSpace = FreeSpace()):
        self.root = Path(root)
        self.blocks = self.root / "blocks"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # Held from choosing groups to evict until their files are gone, so that no
        # store counts on space that is not free yet.  Taken before _lock, never inside.
        self._evicting = threading.Lock()
        self._index = GroupIndex()
        self._epoch: dict[str, int] = {}    # image dir -> times evict_dirs removed it
        self._inventory = Inventory(self.blocks)
        self._writer = BlockWriter(self.root, direct)
        self._space = SpaceGuard(self.root, min_free, self._lock)
        # (store_run looked up at each run, and QUEUED at each open: tests change them)
        self._writes = WriteQueue(lambda run: self.store_run(run), self._drained,
                                  threads=writers, limit=QUEUED)
        #: Called in a writer thread when it has emptied a queue that turned blocks away.
        self.on_drained: Callable[[], None] | None = None
        claim(self.root)
        try:
            self.blocks.mkdir(mode=0o700)
            os.chmod(self.blocks, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise ConfigError(f"cannot create {self.blocks}: {exc.strerror}; choose "
                                  "another --cache-dir") from None
        self._scan()
        self._space.check_read_only()

    @property
    def direct(self) -> bool:
        """Whether blocks are written with ``O_DIRECT`` (until the filesystem refuses)."""
        return self._writer.direct

    # ---- where things are -----------------------------------------------------
    locate = staticmethod(locate)
    image_dir = staticmethod(image_dir)
    slots_in = staticmethod(groupfile.slots_in)

    def path(self, key: BlockKey) -> Path:
        """The group file that holds (or would hold) the block."""
        return groupfile.group_path(self.blocks, locate(key)[0])

    # ---- the index ------------------------------------------------------------
    def _scan(self) -> None:
        found = scan(self.blocks, self._inventory.found)
        for where, group in found:
            self._index.add(where, group)
        log.info("disk cache %s: %d groups, %.1f MiB", self.root, len(found),
                 self._index.bytes / 2**20)
        self._evict()

    @property
    def bytes_used(self) -> int:
        return self._index.bytes

    def __contains__(self, key: BlockKey) -> bool:
        where, slot = locate(key)
        with self._lock:
            return self._index.has(where, slot)

    def _forget(self, where: Where, slot: int) -> None:
        with self._lock:
            self._index.forget(where, slot)

    # ---- reading --------------------------------------------------------------
    def load(self, key: BlockKey) -> bytes | None:
        """The block, or None when it is absent or fails its checks."""
        return self.load_run([key])[0]

    def load_run(self, keys: list[BlockKey]) -> list[bytes | None]:
        """Blocks of one group (consecutive keys of one image); see ``iter_run``."""
        return list(self.iter_run(keys))

    def iter_run(self, keys: list[BlockKey]) -> Iterator[bytes | None]:
        """Blocks of one group (consecutive keys of one image), one by one as they
        are read, after one read-ahead of all their slots; None for each that is
        absent or fails its checks."""
        if not keys:
            return
        where, first = locate(keys[0])
        assert all(locate(k) == (where, first + i) for i, k in enumerate(keys))
        with self._lock:
            present, touch = self._index.hit(where, list(range(first, first + len(keys))))
        yield from groupfile.read_run(
            self.path(keys[0]), keys, first, present, touch,
            miss=lambda slot: self._forget(where, slot),
            read_only=lambda: self._space.stop_storing("its filesystem turned read-only"))

    # ---- whole images -----------------------------------------------------------------
    def image_bytes(self) -> dict[str, int]:
        """Bytes held, by image directory (``image_dir(key)``)."""
        with self._lock:
            return self._index.image_bytes()

    def _drop_dirs(self, image_dirs: set[str]) -> tuple[list[Where], int]:
        """Out of the index: every group of ``image_dirs``; the groups and the bytes
        freed.  Under both locks."""
        victims, freed = self._index.pop_dirs(image_dirs)
        self._space.freed(freed)
        return victims, freed

    def discard_image(self, key: BlockKey) -> int:
        """Remove every block of ``key``'s image version (any index) from the index
        and the disk; returns the bytes freed.  Blocks still queued by
        ``store_later`` may land afterwards."""
        with self._evicting:
            with self._lock:
                victims, freed = self._drop_dirs({image_dir(key)})
            self._remove_groups(victims)
        return freed

    def evict_dirs(self, image_dirs: list[str]) -> int:
        """Remove whole image directories (blocks and index), held or not; the bytes
        freed.  Blocks still queued by ``store_later`` may land afterwards."""
        wanted = set(image_dirs)
        with self._evicting:
            with self._lock:
                _, freed = self._drop_dirs(wanted)
                for d in wanted:
                    self._epoch[d] = self._epoch.get(d, 0) + 1
            self._inventory.remove(wanted)
        if wanted:
            log.info("disk cache: removed %d image directories (%.1f MiB)", len(wanted),
                     freed / 2**20)
        return freed

    # ---- which images, by id (``imagefs cache``: inventory.py) ------------------------
    def describe(self, key: BlockKey, *, name: str | None = None, size: int | None = None,
                 visibility: str | None = None) -> None:
        """What the mount knows of ``key``'s image, for its directory's index (written
        at the next store into it: cheap, callable on the trio thread)."""
        self._inventory.describe(key, image_dir(key), name=name, size=size,
                                 visibility=visibility)

    def images(self) -> list[CachedImage]:
        """Every image directory holding blocks, with what its index says."""
        return self._inventory.images(self.image_bytes())

    def about(self, image_dir: str) -> dict:
        """What the index of ``image_dir`` says (empty when it has none)."""
        return self._inventory.about(image_dir)

    def dirs_of(self, image_id: str) -> list[str]:
        """The image directories of ``image_id`` (any version or block size) that exist."""
        return self._inventory.dirs_of(image_id)

    def all_dirs(self) -> list[str]:
        return self._inventory.all_dirs()

    # ---- what is in use (eviction goes elsewhere first: index.py) --------------------
    def hold(self, key: BlockKey) -> None:
        """``key``'s image is in use (a ``data`` file open): its groups go last.
        Counted: each ``hold`` wants its own ``unhold``."""
        with self._lock:
            self._index.hold(image_dir(key))

    def unhold(self, key: BlockKey) -> None:
        with self._lock:
            self._index.unhold(image_dir(key))

    def keep_last(self, key: BlockKey, indices) -> None:
        """The blocks of ``key``'s image that are evicted after everything else of it
        (replacing any given before; empty to clear)."""
        with self._lock:
            self._index.keep_last(image_dir(key), indices)

    # ---- writing --------------------------------------------------------------
    def store(self, key: BlockKey, data: bytes) -> None:
        """Write the block into its slot and evict the least recently used over the
        bounds; skipped while stores are off, or when even eviction leaves no room
        above ``min_free``."""
        self.store_run([(key, data)])

    def store_run(self, run: list[tuple[BlockKey, bytes]]) -> None:
        """``store`` for blocks in consecutive slots of one group, every one but the
        last a whole block: one write for their bytes and one for their headers."""
        if self.max_bytes <= 0 or not run:
            return
        key = run[0][0]
        bs = key.block_size
        if any(len(data) > bs for _, data in run):
            raise ValueError(f"a block is over the block size of {bs} bytes")
        where, slot = locate(key)
        parts = [d for _, d in run]
        length = sum(len(d) for d in parts)
        need = -(-length // ALIGN) * ALIGN + ALIGN * len(run)  # pages and headers
        with self._evicting:
            with self._lock:
                room, victims = self._space.make_room(
                    need, lambda: self._pop_oldest(keep=where))
                epoch = self._epoch.get(where[0], 0)
            self._remove_groups(victims)
        if not room:
            return
        try:
            self._write_slots(key, where, parts, groupfile.headers(run), slot)
        except OSError as exc:  # a full or broken cache disk costs speed, not reads
            self._store_failed(where, exc)
            return
        finally:
            with self._lock:
                self._space.done(need)
        with self._lock:
            if self._epoch.get(where[0], 0) != epoch:
                return  # its directory was evicted while the block was written
            self._index.stored(where, range(slot, slot + len(run)), bs)
        self._evict(storing=where[0])

    def _write_slots(self, key: BlockKey, where: Where, parts: list, headers: bytes,
                     slot: int) -> None:
        """The blocks (``parts``) from ``slot`` on, then their headers; the image
        directory (with its index) is created when missing, and a directory in the
        group file's place is removed first."""
        self._inventory.ensure(key, where[0])
        path, bs = self.path(key), key.block_size
        offset = slot * bs
        try:
            self._writer.write(path, parts, offset, bs)
        except IsADirectoryError:
            groupfile.remove_directory(path)
            self._writer.write(path, parts, offset, bs)
        except FileNotFoundError:  # its directory was evicted since: make it again
            self._inventory.made_again(key, where[0])
            self._writer.write(path, parts, offset, bs)
        groupfile.write_at(path, headers, groupfile.header_at(bs, slot))

    def store_later(self, key: BlockKey, data: bytes, *, wait: bool = False) -> bool:
        """``store`` in a writer thread.  False: the block was not queued, because the
        queue is full (with ``wait``, wait for room instead); ``on_drained`` is
        called once the writers have emptied the queue."""
        if self.max_bytes <= 0:
            return True  # nothing is stored: there is nothing to offer again
        return self._writes.put(key, data, wait=wait)

    def _drained(self) -> None:
        if self.on_drained is not None:
            self.on_drained()

    def close(self) -> None:
        """Write every queued block and stop the writer threads."""
        self._writes.close()

    # ---- the bounds -----------------------------------------------------------------
    def _evict(self, storing: str | None = None) -> None:
        with self._evicting:
            victims = []
            with self._lock:
                while self._index.bytes > self.max_bytes and len(self._index):
                    victims.append(self._pop_oldest(storing=storing))
            self._remove_groups(victims)

    def _pop_oldest(self, keep: Where | None = None,
                    storing: str | None = None) -> Where | None:
        """Out of the index: the next group to evict (``GroupIndex.pop_oldest``), its
        bytes counted free.  Under both locks: the caller removes its file before it
        lets go of ``_evicting``."""
        popped = self._index.pop_oldest(keep, storing)
        if popped is None:
            return None
        self._space.freed(popped[1])
        return popped[0]

    def _remove_groups(self, victims: list[Where]) -> None:
        groupfile.remove_groups(self.blocks, victims)

    def _store_failed(self, where: Where, exc: OSError) -> None:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            with self._evicting:
                victims = []
                with self._lock:  # give back at least the minimum, and at least one group
                    self._space.read_free()
                    while not victims or self._space.below_minimum():
                        victim = self._pop_oldest(keep=where)
                        if victim is None:
                            break
                        victims.append(victim)
                self._remove_groups(victims)
            self._space.stop_storing(f"its filesystem is full ({exc.strerror})")
        elif exc.errno == errno.EROFS:
            self._space.stop_storing("its filesystem turned read-only")
        else:
            log.warning("disk cache: cannot store a block in %s: %s", self.root, exc)
