"""The disk tier: blocks in group files under ``<cache dir>/blocks``, LRU-bounded.

Consecutive blocks of an image share a file: block ``i`` lives in group
``i // GROUP_BLOCKS``, at slot ``i % GROUP_BLOCKS``::

    blocks/<sha256 of image id, version and block size>.<block size>/<group, hex>

Slot ``k``'s block is at ``k * block size``, aligned as in the image, so the
page cache can read it back in large folios (aligned 1 MiB reads took 0.14-0.43
s of CPU per GiB here, against 0.54-0.86 s 4 KiB off alignment).  After the
``GROUP_BLOCKS`` slots comes a trailer of one header per slot::

    magic "IMGFSBK4" | u32 length | u64 xxh3-64 of the block | 32-byte sha256 of the key

A group file is sparse: slots never written are holes, with zeros for a
header (no magic: absent).  One file per group rather than per block:
creating a file costs ext4 more CPU than writing 1 MiB into it (on a cold
read that fills the cache, 0.4 s of CPU per GiB in groups against 1.4-3.0 s
as files, measured), and a run of cached blocks is read back with one large
read-ahead.

A block is written with ``O_DIRECT`` (from a page-aligned buffer of the
writing thread's, padded to 4 KiB) where the filesystem takes it, its header
through the page cache.  A cold read that fills the cache then does not also
copy every block into the page cache: on the test machine that copy cost
more CPU than anything else in the daemon (a cold 1 GiB read with Glance's
store in the page cache: 1.3-1.7 s, against 2.6-3.2 s buffered).

A slot is written in place (block, then header), without a rename: a torn
or half-written slot fails its length or checksum and is a miss, and so is a
slot whose header names another key.  A slot that fails has its header
zeroed and is written again when the block is next fetched.

The index (which slots exist, and the groups in least-recently-used order) is
rebuilt when the cache opens from each group's trailer and its file's mtime.
A hit touches its group's mtime if it is more than a minute old; a touch
that fails is logged at debug and the hit served.  Directories the cache
creates are 0700 and its files 0600: only the mount's user reads them.
Each image directory has an index file naming its image (``inventory``),
written when the directory is created, and again at the next store when
``describe`` learnt more (a name, a size) than it says.

Eviction removes whole groups, least recently used first, but not blindly:
an image in use (``hold``, counted per open ``data`` file) keeps its groups
while any other image's could go instead, and the groups of an image's
``keep_last`` blocks (a boot profile's, say) go after its others.  The image
whose store makes room counts as not held for that eviction: a reader
streaming an image through a cache too small for it evicts its own older
groups, not those of another image that is open (and idle) meanwhile.
Groups are taken in this order, each rank least recently used first:

    1. images not held, groups without keep-last blocks
    2. images not held, groups with keep-last blocks
    3. held images, groups without keep-last blocks
    4. held images, groups with keep-last blocks

So while held images fill the bound, a store of another image evicts that
image's own block again at once: the held images keep theirs.

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

Two bounds: ``max_bytes`` of blocks, and ``min_free`` left free on the
cache's filesystem.  Before a store, the free space (``statvfs``, read again
at most once a second and counted down by each store in between) is kept
above the minimum by evicting groups, least recently used first; with
nothing left to evict the store is skipped.  A store that fails with ENOSPC
or EDQUOT evicts back to the minimum and turns stores off; so does a store
or a touch that fails with EROFS (without evicting).  With stores off the
cache serves what it holds and stores nothing; every 30 s a store checks the
filesystem again, and stores resume if it is writable and has room.  The
first turn off is logged as a warning, later ones and each resumption at
info.  A cache on a read-only filesystem starts with stores off.

All methods are thread-safe and blocking: call them from worker threads.
``store_later`` queues a block for the cache's own writer threads, so
that a stream reading from the network never waits for the disk.  The
queue is bounded in bytes (``QUEUED``); a block that finds it full is not
queued, and its caller may offer it again once the writers have emptied
the queue (``on_drained``).  The writers run at the lowest CPU priority
(``WRITER_NICE``): filling the cache must not slow the reads it is filled
from, so on a busy core they write what the readers leave time for.  A
writer takes the queued blocks that continue one another in a group file
together and writes them with one write (and their headers with another);
``close`` writes what is queued before the mount exits.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import logging
import math
import mmap
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import xxhash

from ..config import FreeSpace
from ..errors import ConfigError
from .directory import claim
from .inventory import CachedImage, read_index, write_index
from .keys import BlockKey

log = logging.getLogger(__name__)

#: Blocks per group file (16 MiB files with the default 1 MiB blocks).
GROUP_BLOCKS = 16
_MAGIC = b"IMGFSBK4"
_HEADER = struct.Struct("<8sI4xQ32s")  # 56 bytes, each in a 64-byte entry of the trailer
_ENTRY = 64
_TRAILER = GROUP_BLOCKS * _ENTRY
#: Bytes of blocks queued for the writers before ``store_later`` turns blocks away.
QUEUED = 16 << 20
#: The writers' nice value: the lowest priority, below every thread serving reads.
#: A cold 1 GiB read with the disk tier on one core with everything else (pinned),
#: 3 alternating rounds: 1.98-2.50 s against 2.56-3.18 s at the readers' priority
#: with a queue that made the stream wait; no disk tier 1.87-2.32 s.  The cost: on
#: a busy core the writers write what the readers leave time for (see the module's
#: docstring and docs/performance.md).
WRITER_NICE = 19
#: Threads writing queued blocks: two O_DIRECT writes in flight kept a cold read
#: ahead of one (1.59-1.88 s against 1.86-2.82 s for 1 GiB, alternating).
WRITERS = 2
_ALIGN = 4096  # O_DIRECT: offsets, lengths and memory in multiples of this
_TOUCH_EVERY = 60.0  # seconds: recency on disk is kept to this precision
_STATVFS_EVERY = 1.0  # seconds between reads of the filesystem's free space
_RECHECK_EVERY = 30.0  # seconds between checks of a full or read-only cache filesystem
_now = time.monotonic
#: xxh3 rather than zlib.crc32: ~32 GB/s against ~3.5 on the test machine, and
#: every byte of the disk tier is checked on each write and read.
_checksum = xxhash.xxh3_64_intdigest


def _write_at(path: Path, data, offset: int, flags: int = 0) -> None:
    """Write all of ``data`` at ``offset`` of the file opened ``O_WRONLY | flags``;
    a short write (a full disk) fails rather than leave a slot part written."""
    fd = os.open(path, os.O_WRONLY | flags, 0o600)
    try:
        if os.pwrite(fd, data, offset) != len(data):
            raise OSError(errno.ENOSPC, "short write")
    finally:
        os.close(fd)


#: memmove through ctypes, which releases the GIL for the call: the writers run
#: at the lowest priority, but a writer holding the GIL while it copies a block
#: (slice assignment into the mmap holds it) stops every thread that serves reads.
_copy = ctypes.memmove


def _lower_priority() -> None:
    """This thread at ``WRITER_NICE`` (Linux's nice value is per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)


def _name_os_thread(name: str) -> None:
    """Show this thread's name in ``top -H`` and ``perf`` too: Linux would otherwise
    keep the name of the thread that started it (a trio worker's, "pump from ...")."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _image_dir(key: BlockKey) -> str:
    text = f"{key.image_id}:{key.version}:{key.block_size}"
    return f"{hashlib.sha256(text.encode()).hexdigest()[:40]}.{key.block_size}"


@dataclasses.dataclass
class _Group:
    slots: set[int]
    block_size: int
    touched: float  # when the file's mtime was last set

    @property
    def bytes(self) -> int:
        return len(self.slots) * self.block_size


class DiskCache:
    """The disk tier in ``root``, bounded by ``max_bytes`` of blocks and by ``min_free``
    (none by default) left free on its filesystem.  Raises ``ConfigError`` for a root
    that is not, or cannot be made, an imagefs cache directory."""

    def __init__(self, root: str | os.PathLike, max_bytes: int, *, direct: bool = True,
                 writers: int = WRITERS, min_free: FreeSpace = FreeSpace()):
        self.root = Path(root)
        self._direct = direct  # cleared if the filesystem refuses O_DIRECT
        self._buffers = threading.local()
        self.blocks = self.root / "blocks"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # Held from choosing groups to evict until their files are gone, so that no
        # store counts on space that is not free yet.  Taken before _lock, never inside.
        self._evicting = threading.Lock()
        # (image dir, group) -> _Group, least recently used first
        self._groups: collections.OrderedDict[tuple[str, int], _Group] = \
            collections.OrderedDict()
        self._bytes = 0
        self._dirs: set[str] = set()
        # Blocks for the writer threads, oldest first; None tells a writer to stop.
        self._queue: collections.deque = collections.deque()
        self._queued = threading.Condition()
        self._queued_bytes = 0
        self._writing = 0  # runs taken from the queue and not yet written
        self._turned_away = False  # a block found the queue full since it was last empty
        #: Called in a writer thread when it has emptied a queue that turned blocks away.
        self.on_drained: Callable[[], None] | None = None
        self._about: dict[str, dict] = {}   # image dir -> what its index says (or will)
        self._indexed: set[str] = set()     # image dirs whose index says all of _about
        self._epoch: dict[str, int] = {}    # image dir -> times evict_dirs removed it
        self._held: collections.Counter[str] = collections.Counter()  # image dir -> opens
        self._last: dict[str, set[int]] = {}  # image dir -> groups of keep-last blocks
        self.writers = writers
        self._writers: list[threading.Thread] = []
        self.min_free = min_free
        self._free = 0  # bytes free on the filesystem: statvfs's, less stores' since
        self._min_free_bytes = 0
        self._free_read_at = -math.inf
        self._pending = 0  # bytes of stores under way (not yet in statvfs's figure)
        self._off_until: float | None = None  # stores are off until a check then
        self._warned_off = False
        self._told_no_room = False
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
        with contextlib.suppress(OSError):
            if os.statvfs(self.root).f_flag & os.ST_RDONLY:
                self._stop_storing("it is on a read-only filesystem")

    # ---- where things are -----------------------------------------------------
    @staticmethod
    def locate(key: BlockKey) -> tuple[tuple[str, int], int]:
        """``((image dir, group), slot)`` of a block."""
        group, slot = divmod(key.index, GROUP_BLOCKS)
        return (_image_dir(key), group), slot

    def path(self, key: BlockKey) -> Path:
        """The group file that holds (or would hold) the block."""
        (image_dir, group), _ = self.locate(key)
        return self.blocks / image_dir / f"{group:x}"

    # ---- the index ------------------------------------------------------------
    def _scan(self) -> None:
        found, stale = [], 0
        for sub in self.blocks.iterdir() if self.blocks.is_dir() else ():
            name, _, block_size = sub.name.partition(".")
            if not (sub.is_dir() and block_size.isdigit() and len(name) == 40):
                stale += 1  # an older version's layout
                if sub.is_dir():
                    shutil.rmtree(sub, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        sub.unlink()
                continue
            self._dirs.add(sub.name)
            about = read_index(sub)
            if about is not None:
                self._about[sub.name] = about
                self._indexed.add(sub.name)
            for entry in os.scandir(sub):
                with contextlib.suppress(OSError, ValueError):
                    group = int(entry.name, 16)
                    if entry.is_dir(follow_symlinks=False):
                        try:
                            self._remove_directory(Path(entry.path))
                        except OSError as exc:
                            log.warning("disk cache: cannot remove the directory %s, where a "
                                        "group file belongs: %s", entry.path, exc)
                        continue
                    slots = self._slots_in(entry.path, int(block_size))
                    if slots:
                        mtime = entry.stat().st_mtime
                        found.append((mtime, (sub.name, group),
                                      _Group(slots, int(block_size), mtime)))
                    else:
                        os.unlink(entry.path)  # nothing in it (its blocks were dropped)
        found.sort(key=lambda f: f[0])
        for _, where, group in found:
            self._groups[where] = group
            self._bytes += group.bytes
        if stale:
            log.info("disk cache %s: removed %d entries of an older cache format",
                     self.root, stale)
        log.info("disk cache %s: %d groups, %.1f MiB", self.root, len(found), self._bytes / 2**20)
        self._evict()

    @staticmethod
    def _slots_in(path: str, block_size: int) -> set[int]:
        """The slots of a group file whose header has the magic (loads check the rest)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            trailer = os.pread(fd, _TRAILER, GROUP_BLOCKS * block_size)
        finally:
            os.close(fd)
        return {k for k in range(GROUP_BLOCKS)
                if trailer[k * _ENTRY:k * _ENTRY + len(_MAGIC)] == _MAGIC}

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __contains__(self, key: BlockKey) -> bool:
        where, slot = self.locate(key)
        with self._lock:
            group = self._groups.get(where)
            return group is not None and slot in group.slots

    def _hit(self, where: tuple[str, int], slots: list[int]) -> tuple[list[bool], bool]:
        """Which of ``slots`` are indexed; marks the group recently used.
        Also whether its file's mtime is due a touch."""
        with self._lock:
            group = self._groups.get(where)
            if group is None:
                return [False] * len(slots), False
            self._groups.move_to_end(where)
            touch = time.time() - group.touched > _TOUCH_EVERY
            if touch:
                group.touched = time.time()
            return [s in group.slots for s in slots], touch

    def _forget(self, where: tuple[str, int], slot: int) -> None:
        with self._lock:
            group = self._groups.get(where)
            if group is not None and slot in group.slots:
                group.slots.discard(slot)
                self._bytes -= group.block_size

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
        bs = keys[0].block_size
        where, first = self.locate(keys[0])
        slots = [first + i for i in range(len(keys))]
        assert all(self.locate(k) == (where, s) for k, s in zip(keys, slots))
        present, touch = self._hit(where, slots)
        path = self.path(keys[0])
        fd = trailer = None
        if any(present):
            try:
                fd = os.open(path, os.O_RDONLY)
                # One read-ahead of the whole run, rather than the kernel's slow start.
                os.posix_fadvise(fd, first * bs, len(keys) * bs, os.POSIX_FADV_WILLNEED)
                trailer = os.pread(fd, _TRAILER, GROUP_BLOCKS * bs)
            except OSError as exc:
                log.warning("disk cache: cannot read %s (%s); treating as a miss", path, exc)
                for slot in slots:
                    self._forget(where, slot)
                if fd is not None:
                    os.close(fd)
                fd = None
            if touch and fd is not None:
                self._touch(fd, path)
        try:
            for key, slot, indexed in zip(keys, slots, present):
                data = None
                if fd is not None and indexed:
                    try:
                        data = self._read_slot(fd, key, slot, trailer)
                    except OSError as exc:
                        log.warning("disk cache: cannot read %s (%s); treating as a miss",
                                    path, exc)
                    if data is None:
                        self._drop(where, slot, path)
                yield data
        finally:
            if fd is not None:
                os.close(fd)

    def _touch(self, fd: int, path: Path) -> None:
        """Set the group file's mtime (recency, for eviction after a remount too); a
        failure costs only that recency."""
        try:
            os.utime(fd)
        except OSError as exc:
            log.debug("disk cache: cannot touch %s (%s)", path, exc)
            if exc.errno == errno.EROFS:
                self._stop_storing("its filesystem turned read-only")

    @staticmethod
    def _read_slot(fd: int, key: BlockKey, slot: int, trailer: bytes) -> bytes | None:
        """The block in ``slot``, if it passes every check."""
        header = trailer[slot * _ENTRY:slot * _ENTRY + _HEADER.size]
        if len(header) != _HEADER.size:
            return None
        magic, length, checksum, key_hash = _HEADER.unpack(header)
        if magic != _MAGIC or key_hash != key.digest() or length > key.block_size:
            return None
        data = os.pread(fd, length, slot * key.block_size)
        if len(data) != length or _checksum(data) != checksum:
            return None
        return data

    def _drop(self, where: tuple[str, int], slot: int, path: Path) -> None:
        """A slot that failed its checks: out of the index, its header zeroed."""
        log.warning("disk cache: block %d of %s is corrupt; dropping it", slot, path)
        self._forget(where, slot)
        block_size = int(where[0].rpartition(".")[2])
        with contextlib.suppress(OSError):
            _write_at(path, bytes(_ENTRY), GROUP_BLOCKS * block_size + slot * _ENTRY)

    def image_bytes(self) -> dict[str, int]:
        """Bytes held, by image directory (``image_dir(key)``)."""
        held: dict[str, int] = {}
        with self._lock:
            for (image_dir, _), group in self._groups.items():
                held[image_dir] = held.get(image_dir, 0) + group.bytes
        return held

    @staticmethod
    def image_dir(key: BlockKey) -> str:
        return _image_dir(key)

    def discard_image(self, key: BlockKey) -> int:
        """Remove every block of ``key``'s image version (any index) from the index
        and the disk; returns the bytes freed.  Blocks still queued by
        ``store_later`` may land afterwards."""
        image_dir = _image_dir(key)
        with self._evicting:
            with self._lock:
                victims = [where for where in self._groups if where[0] == image_dir]
                freed = 0
                for where in victims:
                    group = self._groups.pop(where)
                    self._bytes -= group.bytes
                    self._free += group.bytes
                    freed += group.bytes
            self._remove_groups(victims)
        return freed

    # ---- which images, by id (``imagefs cache``) ------------------------------------
    def describe(self, key: BlockKey, *, name: str | None = None, size: int | None = None,
                 visibility: str | None = None) -> None:
        """What the mount knows of ``key``'s image, for its directory's index (written
        at the next store into it: cheap, callable on the trio thread)."""
        image_dir = _image_dir(key)
        about = {"id": key.image_id, "version": key.version, "block_size": key.block_size,
                 "name": name, "size": size, "visibility": visibility}
        with self._lock:
            if self._about.get(image_dir) != about:
                self._about[image_dir] = about
                self._indexed.discard(image_dir)

    def images(self) -> list[CachedImage]:
        """Every image directory holding blocks, with what its index says."""
        held = self.image_bytes()
        with self._lock:
            return [CachedImage(d, **self._about.get(d, {}), cached_bytes=n)
                    for d, n in sorted(held.items()) if n]

    def about(self, image_dir: str) -> dict:
        """What the index of ``image_dir`` says (empty when it has none)."""
        with self._lock:
            return dict(self._about.get(image_dir, {}))

    def dirs_of(self, image_id: str) -> list[str]:
        """The image directories of ``image_id`` (any version or block size) that exist."""
        with self._lock:
            return sorted(d for d, about in self._about.items()
                          if about.get("id") == image_id and d in self._dirs)

    def all_dirs(self) -> list[str]:
        with self._lock:
            return sorted(self._dirs)

    def evict_dirs(self, image_dirs: list[str]) -> int:
        """Remove whole image directories (blocks and index), held or not; the bytes
        freed.  Blocks still queued by ``store_later`` may land afterwards."""
        from .inventory import remove_image_dir

        wanted = set(image_dirs)
        with self._evicting:
            with self._lock:
                freed = 0
                for where in [w for w in self._groups if w[0] in wanted]:
                    group = self._groups.pop(where)
                    self._bytes -= group.bytes
                    self._free += group.bytes
                    freed += group.bytes
                for image_dir in wanted:
                    self._epoch[image_dir] = self._epoch.get(image_dir, 0) + 1
                    self._dirs.discard(image_dir)
                    self._indexed.discard(image_dir)
            for image_dir in sorted(wanted):
                try:
                    remove_image_dir(self.blocks, image_dir)
                except OSError as exc:
                    log.warning("disk cache: %s", exc)
        if wanted:
            log.info("disk cache: removed %d image directories (%.1f MiB)", len(wanted),
                     freed / 2**20)
        return freed

    # ---- what is in use (eviction goes elsewhere first) -----------------------------
    def hold(self, key: BlockKey) -> None:
        """``key``'s image is in use (a ``data`` file open): its groups go last.
        Counted: each ``hold`` wants its own ``unhold``."""
        with self._lock:
            self._held[_image_dir(key)] += 1

    def unhold(self, key: BlockKey) -> None:
        image_dir = _image_dir(key)
        with self._lock:
            if self._held[image_dir] > 1:
                self._held[image_dir] -= 1
            else:
                del self._held[image_dir]

    def keep_last(self, key: BlockKey, indices) -> None:
        """The blocks of ``key``'s image that are evicted after everything else of it
        (replacing any given before; empty to clear)."""
        groups = {i // GROUP_BLOCKS for i in indices}
        with self._lock:
            if groups:
                self._last[_image_dir(key)] = groups
            else:
                self._last.pop(_image_dir(key), None)

    def _rank(self, where: tuple[str, int], storing: str | None) -> int:
        """Eviction order (see the module docstring) when a store of image directory
        ``storing`` makes room: lower goes first.  Under the lock."""
        held = where[0] in self._held and where[0] != storing
        return 2 * held + (where[1] in self._last.get(where[0], ()))

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
        where, slot = self.locate(key)
        parts = [d for _, d in run]
        length = sum(len(d) for d in parts)
        need = -(-length // _ALIGN) * _ALIGN + _ALIGN * len(run)  # pages and headers
        with self._evicting:
            with self._lock:
                room, victims = self._make_room(where, need)
                epoch = self._epoch.get(where[0], 0)
            self._remove_groups(victims)
        if not room:
            return
        headers = b"".join(_HEADER.pack(_MAGIC, len(d), _checksum(d), k.digest())
                           .ljust(_ENTRY, b"\0") for k, d in run)
        path = self.path(key)
        try:
            self._write_slot(key, where, path, parts, headers, slot, bs)
        except OSError as exc:  # a full or broken cache disk costs speed, not reads
            self._store_failed(where, exc)
            return
        finally:
            with self._lock:
                self._pending -= need
        with self._lock:
            if self._epoch.get(where[0], 0) != epoch:
                return  # its directory was evicted while the block was written
            group = self._groups.get(where)
            if group is None:
                group = self._groups[where] = _Group(set(), bs, time.time())
            self._groups.move_to_end(where)
            for s in range(slot, slot + len(run)):
                if s not in group.slots:
                    group.slots.add(s)
                    self._bytes += bs
        self._evict(storing=where[0])

    def _write_slot(self, key: BlockKey, where: tuple[str, int], path: Path, parts: list,
                    headers: bytes, slot: int, block_size: int) -> None:
        """The blocks (``parts``) from ``slot`` on, then their headers; the image
        directory (with its index) is created when missing, and a directory in the
        group file's place is removed first."""
        if where[0] not in self._dirs:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            self._dirs.add(where[0])
        if where[0] not in self._indexed:
            self._write_index(key, where[0])
        offset = slot * block_size
        try:
            self._write_blocks(path, parts, offset, block_size)
        except IsADirectoryError:
            self._remove_directory(path)
            self._write_blocks(path, parts, offset, block_size)
        except FileNotFoundError:  # its directory was evicted since: make it again
            path.parent.mkdir(mode=0o700, exist_ok=True)
            self._write_index(key, where[0])
            self._write_blocks(path, parts, offset, block_size)
        _write_at(path, headers, GROUP_BLOCKS * block_size + slot * _ENTRY)

    def _write_index(self, key: BlockKey, image_dir: str) -> None:
        """The image directory's index, from ``describe`` or else from the key alone; a
        failure costs only the name in ``imagefs cache list``."""
        with self._lock:
            about = self._about.setdefault(image_dir, {
                "id": key.image_id, "version": key.version, "block_size": key.block_size})
            about = dict(about)
        try:
            write_index(self.blocks / image_dir, about)
        except OSError as exc:
            log.debug("disk cache: cannot write the index of %s (%s)", image_dir, exc)
            return
        with self._lock:
            if self._about.get(image_dir) == about:
                self._indexed.add(image_dir)

    @staticmethod
    def _remove_directory(path: Path) -> None:
        """A directory where a group file belongs (always inside ``blocks``): removed."""
        shutil.rmtree(path)
        log.warning("disk cache: removed the directory %s, where a group file belongs", path)

    def _write_blocks(self, path: Path, parts: list, offset: int, block_size: int) -> None:
        """Write consecutive blocks' bytes into their slots: with ``O_DIRECT`` where the
        cache's filesystem takes it (each block copied once, into an aligned buffer),
        otherwise through the page cache."""
        length = sum(len(d) for d in parts)
        if self._direct and block_size % _ALIGN == 0 and length:  # (no empty mapping)
            padded = -(-length // _ALIGN) * _ALIGN  # the slot has room for it
            buf, address = self._aligned_buffer(padded)
            at = 0
            for data in parts:
                if isinstance(data, bytes):  # a copy that lets go of the GIL: see _copy
                    _copy(address + at, data, len(data))
                else:
                    buf[at:at + len(data)] = data
                at += len(data)
            buf[length:padded] = bytes(padded - length)
            try:
                with memoryview(buf) as view:
                    _write_at(path, view[:padded], offset, os.O_CREAT | os.O_DIRECT)
                return
            except OSError as exc:  # EINVAL: refused, at the open or at the write
                if exc.errno != errno.EINVAL:
                    raise
                self._no_direct(exc)
        _write_at(path, parts[0] if len(parts) == 1 else b"".join(parts), offset, os.O_CREAT)

    def _aligned_buffer(self, size: int) -> tuple[mmap.mmap, int]:
        """This thread's page-aligned buffer of at least ``size`` bytes and its
        address, kept for reuse (``O_DIRECT`` needs aligned memory; a bytes
        object's is not)."""
        kept = getattr(self._buffers, "kept", None)
        if kept is None or len(kept[0]) < size:
            buf = mmap.mmap(-1, size)
            view = ctypes.c_char.from_buffer(buf)  # (holds the mapping while kept)
            kept = self._buffers.kept = (buf, ctypes.addressof(view), view)
        return kept[0], kept[1]

    def _no_direct(self, exc: OSError) -> None:
        if self._direct:
            log.info("disk cache: %s refuses O_DIRECT writes (%s); writing through the "
                     "page cache", self.root, exc)
        self._direct = False

    def store_later(self, key: BlockKey, data: bytes, *, wait: bool = False) -> bool:
        """``store`` in a writer thread.  False: the block was not queued, because
        ``QUEUED`` bytes are (with ``wait``, wait for room instead); ``on_drained``
        is called once the writers have emptied the queue."""
        if self.max_bytes <= 0:
            return True  # nothing is stored: there is nothing to offer again
        with self._queued:  # several streams may queue their first blocks at once
            if not self._writers:
                self._writers = [threading.Thread(target=self._write_queued, daemon=True,
                                                  name=f"imagefs-disk-w{i}")
                                 for i in range(self.writers)]
                for thread in self._writers:
                    thread.start()
            while self._queued_bytes >= QUEUED:
                if not wait:
                    self._turned_away = True
                    return False
                self._queued.wait()
            self._queue.append((key, data))
            self._queued_bytes += len(data)
            self._queued.notify_all()
            return True

    def _next_run(self) -> list[tuple[BlockKey, bytes]] | None:
        """Wait for queued blocks; take the first and the blocks queued right behind it
        that continue it in its group file (None: stop).  Under ``_queued``."""
        while not self._queue:
            self._queued.wait()
        if self._queue[0] is None:
            self._queue.popleft()
            return None
        run = [self._queue.popleft()]
        while self._queue and self._continues(run[-1], self._queue[0]):
            run.append(self._queue.popleft())
        self._queued_bytes -= sum(len(d) for _, d in run)
        self._queued.notify_all()
        return run

    def _continues(self, last: tuple[BlockKey, bytes], item) -> bool:
        if item is None or len(last[1]) != last[0].block_size:
            return False
        (key, _), nxt = last, item[0]
        return (nxt.index == key.index + 1 and nxt.index % GROUP_BLOCKS != 0
                and (nxt.image_id, nxt.version, nxt.block_size)
                == (key.image_id, key.version, key.block_size))

    def _write_queued(self) -> None:
        _name_os_thread(threading.current_thread().name)
        _lower_priority()
        while True:
            with self._queued:
                run = self._next_run()
                if run is None:
                    return
                self._writing += 1
            try:
                self.store_run(run)
            except Exception:  # the writer must outlive any one block, or the queue jams
                log.exception("disk cache: storing a block failed")
            finally:
                with self._queued:
                    self._writing -= 1
                    self._queued.notify_all()
                    drained = self._turned_away and not self._queue
                    if drained:
                        self._turned_away = False
            if drained and self.on_drained is not None:
                try:
                    self.on_drained()
                except Exception:
                    log.exception("disk cache: offering blocks again failed")

    def flush(self) -> None:
        """Wait until every block queued so far is written."""
        with self._queued:
            while self._queue or self._writing:
                self._queued.wait()

    def close(self) -> None:
        """Write every queued block and stop the writer threads."""
        with self._queued:
            for _ in self._writers:
                self._queue.append(None)
            self._queued.notify_all()
        for thread in self._writers:
            thread.join()
        self._writers = []

    # ---- the bounds -----------------------------------------------------------------
    def _evict(self, storing: str | None = None) -> None:
        with self._evicting:
            victims = []
            with self._lock:
                while self._bytes > self.max_bytes and self._groups:
                    victims.append(self._pop_oldest(storing=storing))
            self._remove_groups(victims)

    def _pop_oldest(self, keep: tuple[str, int] | None = None,
                    storing: str | None = None) -> tuple[str, int] | None:
        """Out of the index: the group other than ``keep`` to evict first, the least
        recently used of the lowest rank (``_rank``, for a store of image directory
        ``storing``; ``keep``'s when given); None if there is none.  Under both locks:
        the caller removes its file before it lets go of ``_evicting``."""
        if keep is not None:
            storing = keep[0]
        where, best = None, 4
        for w in self._groups:
            if w == keep:
                continue
            rank = self._rank(w, storing) if self._held or self._last else 0
            if rank < best:
                where, best = w, rank
                if rank == 0:
                    break
        if where is not None:
            group = self._groups.pop(where)
            self._bytes -= group.bytes
            self._free += group.bytes
        return where

    def _remove_groups(self, victims: list[tuple[str, int]]) -> None:
        for image_dir, group in victims:
            with contextlib.suppress(OSError):
                (self.blocks / image_dir / f"{group:x}").unlink()
        if victims:
            log.debug("disk cache: evicted %d groups", len(victims))

    def _read_free(self) -> bool:
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

    def _make_room(self, near: tuple[str, int], need: int) -> tuple[bool, list]:
        """Whether a store of ``need`` bytes into group ``near`` may go ahead, and the
        groups evicted to keep ``min_free`` (their files are the caller's to remove).
        Reserves ``need``.  Under the lock."""
        now = _now()
        if self._off_until is not None:
            if now < self._off_until:
                return False, []
            writable = self._read_free()
            if not writable or self._free - need < self._min_free_bytes:
                self._off_until = now + _RECHECK_EVERY
                return False, []
            self._off_until = None
            log.info("disk cache %s: storing blocks again (%.1f MiB free)", self.root,
                     self._free / 2**20)
        elif now - self._free_read_at >= _STATVFS_EVERY:
            self._read_free()
        victims = []
        while self._free - need < self._min_free_bytes:
            victim = self._pop_oldest(keep=near)
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

    def _store_failed(self, where: tuple[str, int], exc: OSError) -> None:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            with self._evicting:
                victims = []
                with self._lock:  # give back at least the minimum, and at least one group
                    self._read_free()
                    while not victims or self._free < self._min_free_bytes:
                        victim = self._pop_oldest(keep=where)
                        if victim is None:
                            break
                        victims.append(victim)
                self._remove_groups(victims)
            self._stop_storing(f"its filesystem is full ({exc.strerror})")
        elif exc.errno == errno.EROFS:
            self._stop_storing("its filesystem turned read-only")
        else:
            log.warning("disk cache: cannot store a block in %s: %s", self.root, exc)

    def _stop_storing(self, why: str) -> None:
        """Stores off until the next check; one warning for the first time, info after."""
        with self._lock:
            if self._off_until is not None:
                return
            self._off_until = _now() + _RECHECK_EVERY
            first, self._warned_off = not self._warned_off, True
        (log.warning if first else log.info)(
            "disk cache %s: %s; serving the blocks it holds and storing no new ones "
            "(checking again every %d s)", self.root, why, _RECHECK_EVERY)
