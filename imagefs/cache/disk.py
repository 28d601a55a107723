"""The disk tier: one file per block under ``<cache dir>/blocks``, LRU-bounded.

Each file is a 52-byte header and the block::

    magic "IMGFSBK2" | u32 length | u64 xxh3-64 of the block | 32-byte sha256 of the key

written to ``tmp/`` and renamed into place, so a reader sees a whole block or
none.  On load the header is checked against the key and the bytes against
the checksum; any fault deletes the file and counts as a miss.  The index (which
blocks exist, in least-recently-used order) is rebuilt from the files' mtimes
when the cache opens, so recency survives a remount; a hit touches the file's
mtime if it is more than a minute old (a touch is a journal write: a
sequential read of a just-filled cache would otherwise pay one per block).  Directories are 0700 and files 0600: only the mount's user reads them.

All methods are thread-safe and blocking: call them from worker threads.
``store_later`` queues a block for a writer thread of the cache's own (a
bounded queue: a full one makes the caller wait), so that a stream reading
from the network does not also wait for the disk; ``close`` writes what is
queued before the mount exits.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import struct
import threading
import time
from pathlib import Path

import xxhash

from .keys import BlockKey

log = logging.getLogger(__name__)

_MAGIC = b"IMGFSBK2"
_OLD_MAGICS = (b"IMGFSBK1",)  # earlier formats: dropped quietly
_TOUCH_EVERY = 60.0  # seconds: recency on disk is kept to this precision
_HEADER = struct.Struct("<8sIQ32s")
#: xxh3 rather than zlib.crc32: ~32 GB/s against ~3.5 on the test machine, and
#: every byte of the disk tier is checked on each write and read.
_checksum = xxhash.xxh3_64_intdigest


class DiskCache:
    def __init__(self, root: str | os.PathLike, max_bytes: int):
        self.root = Path(root)
        self.blocks = self.root / "blocks"
        self.tmp = self.root / "tmp"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._index: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._bytes = 0
        self._mtimes: dict[str, float] = {}  # when each file's mtime was last set
        self._subdirs: set[str] = set()
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._writer: threading.Thread | None = None
        old = os.umask(0o077)
        try:
            for d in (self.root, self.blocks, self.tmp):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(d, 0o700)
        finally:
            os.umask(old)
        self._scan()

    def _path(self, digest: str) -> Path:
        return self.blocks / digest[:2] / digest

    def _scan(self) -> None:
        for leftover in self.tmp.iterdir():  # from a crash mid-write
            with contextlib.suppress(OSError):
                leftover.unlink()
        found = []
        for sub in self.blocks.iterdir():
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                with contextlib.suppress(OSError):
                    st = entry.stat()
                    found.append((st.st_mtime_ns, entry.name, st.st_size))
        found.sort()
        for mtime_ns, digest, size in found:
            self._index[digest] = size
            self._mtimes[digest] = mtime_ns / 1e9
            self._bytes += size
        log.info("disk cache %s: %d blocks, %.1f MiB", self.root, len(found), self._bytes / 2**20)
        self._evict()

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __contains__(self, key: BlockKey) -> bool:
        with self._lock:
            return key.digest() in self._index

    def load(self, key: BlockKey) -> bytes | None:
        """The block, or None when it is absent or fails its checks."""
        digest = key.digest()
        with self._lock:
            if digest not in self._index:
                return None
            self._index.move_to_end(digest)
            touch = time.time() - self._mtimes.get(digest, 0.0) > _TOUCH_EVERY
            if touch:
                self._mtimes[digest] = time.time()
        path = self._path(digest)
        data, old_format = None, False
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                # One read-ahead of the whole file, rather than the kernel's slow start.
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                header = os.pread(fd, _HEADER.size, 0)
                if len(header) == _HEADER.size:
                    magic, length, checksum, key_hash = _HEADER.unpack(header)
                    if magic in _OLD_MAGICS:
                        old_format = True
                    elif magic == _MAGIC and key_hash == bytes.fromhex(digest):
                        data = os.pread(fd, length + 1, _HEADER.size)  # +1: no trailing bytes
                        if len(data) != length or _checksum(data) != checksum:
                            data = None
                if touch:
                    os.utime(fd)  # recency, for eviction after a remount too
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("disk cache: cannot read %s (%s); treating as a miss", path, exc)
            self._forget(digest)
            return None
        if data is None:
            if old_format:
                log.debug("disk cache: block %s is in an older format; discarding it", path)
            else:
                log.warning("disk cache: block %s is corrupt; discarding it", path)
            self._forget(digest, unlink=True)
        return data

    def store(self, key: BlockKey, data: bytes) -> None:
        """Write the block (atomically) and evict the least recently used over the bound."""
        if self.max_bytes <= 0:
            return
        digest = key.digest()
        header = _HEADER.pack(_MAGIC, len(data), _checksum(data), bytes.fromhex(digest))
        path = self._path(digest)
        tmp = self.tmp / f"{digest}.{threading.get_ident()}"
        try:
            if digest[:2] not in self._subdirs:
                path.parent.mkdir(mode=0o700, exist_ok=True)
                self._subdirs.add(digest[:2])
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(header)
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:  # a full or broken cache disk costs speed, not reads
            log.warning("disk cache: cannot store a block in %s: %s", self.root, exc)
            return
        size = len(header) + len(data)
        with self._lock:
            self._bytes += size - self._index.pop(digest, 0)
            self._index[digest] = size
            self._mtimes[digest] = time.time()
        self._evict()

    def store_later(self, key: BlockKey, data: bytes) -> None:
        """``store`` in the cache's writer thread; waits only while 16 blocks are queued."""
        if self.max_bytes <= 0:
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_queued, name="imagefs-disk-writer",
                                            daemon=True)
            self._writer.start()
        self._queue.put((key, data))

    def _write_queued(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.store(*item)
            except Exception:  # the writer must outlive any one block, or the queue jams
                log.exception("disk cache: storing a block failed")
            finally:
                self._queue.task_done()

    def close(self) -> None:
        """Write every queued block and stop the writer thread."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None

    def _forget(self, digest: str, unlink: bool = False) -> None:
        with self._lock:
            self._bytes -= self._index.pop(digest, 0)
            self._mtimes.pop(digest, None)
        if unlink:
            with contextlib.suppress(OSError):
                self._path(digest).unlink()

    def _evict(self) -> None:
        victims = []
        with self._lock:
            while self._bytes > self.max_bytes and self._index:
                digest, size = self._index.popitem(last=False)
                self._mtimes.pop(digest, None)
                self._bytes -= size
                victims.append(digest)
        for digest in victims:
            with contextlib.suppress(OSError):
                self._path(digest).unlink()
        if victims:
            log.debug("disk cache: evicted %d blocks", len(victims))
