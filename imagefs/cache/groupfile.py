"""The disk tier's file format: blocks in group files, written with ``O_DIRECT``.

Consecutive blocks of an image share a file: block ``i`` lives in group
``i // GROUP_BLOCKS``, at slot ``i % GROUP_BLOCKS``::

    blocks/<sha256 of image id, version and block size>.<block size>/<group, hex>

Slot ``k``'s block is at ``k * block size``, aligned as in the image, so the
page cache can read it back in large folios.  After the ``GROUP_BLOCKS``
slots comes a trailer of one header per slot::

    magic "IMGFSBK4" | u32 length | u64 xxh3-64 of the block | 32-byte sha256 of the key

A group file is sparse: slots never written are holes, with zeros for a
header (no magic: absent).  One file per group rather than per block:
creating a file costs ext4 more CPU than writing a block into it, and a run
of cached blocks is read back with one large read-ahead.

A block is written with ``O_DIRECT`` (from a page-aligned buffer of the
writing thread's, padded to 4 KiB) where the filesystem takes it, its header
through the page cache: a cold read that fills the cache then does not also
copy every block into the page cache, which cost more CPU than anything else
in the daemon.  A filesystem that refuses ``O_DIRECT`` is written through
the page cache from then on.

A slot is written in place (block, then header), without a rename: a torn
or half-written slot fails its length or checksum and is a miss, and so is a
slot whose header names another key.  A slot that fails has its header
zeroed (``zero_header``) and is written again when the block is next fetched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import mmap
import os
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import xxhash

from .keys import BlockKey

log = logging.getLogger("imagefs.cache.disk")  # the disk tier logs under one name

#: Blocks per group file (4 MiB files with the default 256 KiB blocks).
GROUP_BLOCKS = 16
MAGIC = b"IMGFSBK4"
_HEADER = struct.Struct("<8sI4xQ32s")  # 56 bytes, each in a 64-byte entry of the trailer
ENTRY = 64
_TRAILER = GROUP_BLOCKS * ENTRY
ALIGN = 4096  # O_DIRECT: offsets, lengths and memory in multiples of this
#: xxh3 rather than zlib.crc32, several times faster: every byte of the disk tier
#: is checked on each write and read.
checksum = xxhash.xxh3_64_intdigest
#: memmove through ctypes, which releases the GIL for the call: the writers run
#: at the lowest priority, but a writer holding the GIL while it copies a block
#: (slice assignment into the mmap holds it) stops every thread that serves reads.
_copy = ctypes.memmove


def image_dir(key: BlockKey) -> str:
    """The name of the directory of ``key``'s image version and block size."""
    text = f"{key.image_id}:{key.version}:{key.block_size}"
    return f"{hashlib.sha256(text.encode()).hexdigest()[:40]}.{key.block_size}"


def locate(key: BlockKey) -> tuple[tuple[str, int], int]:
    """``((image dir, group), slot)`` of a block."""
    group, slot = divmod(key.index, GROUP_BLOCKS)
    return (image_dir(key), group), slot


def group_path(blocks: Path, where: tuple[str, int]) -> Path:
    """The file of group ``where`` (``(image dir, group)``) under ``blocks``."""
    return blocks / where[0] / f"{where[1]:x}"


def remove_groups(blocks: Path, victims: list[tuple[str, int]]) -> None:
    """Remove evicted groups' files (one already gone is no matter)."""
    for where in victims:
        with contextlib.suppress(OSError):
            group_path(blocks, where).unlink()
    if victims:
        log.debug("disk cache: evicted %d groups", len(victims))


def remove_directory(path: Path) -> None:
    """A directory where a group file belongs (always inside ``blocks``): removed.
    Raises ``OSError``."""
    shutil.rmtree(path)
    log.warning("disk cache: removed the directory %s, where a group file belongs", path)


def header_at(block_size: int, slot: int) -> int:
    """Where ``slot``'s header is in a group file of ``block_size`` blocks."""
    return GROUP_BLOCKS * block_size + slot * ENTRY


def write_at(path: Path, data, offset: int, flags: int = 0) -> None:
    """Write all of ``data`` at ``offset`` of the file opened ``O_WRONLY | flags``;
    a short write (a full disk) fails rather than leave a slot part written."""
    fd = os.open(path, os.O_WRONLY | flags, 0o600)
    try:
        if os.pwrite(fd, data, offset) != len(data):
            raise OSError(errno.ENOSPC, "short write")
    finally:
        os.close(fd)


def headers(run: list[tuple[BlockKey, bytes]]) -> bytes:
    """The trailer entries of blocks in consecutive slots, for one write."""
    return b"".join(_HEADER.pack(MAGIC, len(d), checksum(d), k.digest()).ljust(ENTRY, b"\0")
                    for k, d in run)


def zero_header(path: Path, block_size: int, slot: int) -> None:
    """Mark ``slot`` absent (its block failed its checks).  Raises ``OSError``."""
    write_at(path, bytes(ENTRY), header_at(block_size, slot))


def read_trailer(fd: int, block_size: int) -> bytes:
    return os.pread(fd, _TRAILER, GROUP_BLOCKS * block_size)


def slots_in(path: str, block_size: int) -> set[int]:
    """The slots of a group file whose header has the magic (loads check the rest)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        trailer = read_trailer(fd, block_size)
    finally:
        os.close(fd)
    return {k for k in range(GROUP_BLOCKS) if trailer[k * ENTRY:k * ENTRY + len(MAGIC)] == MAGIC}


def read_slot(fd: int, key: BlockKey, slot: int, trailer: bytes) -> bytes | None:
    """The block in ``slot``, if it passes every check."""
    header = trailer[slot * ENTRY:slot * ENTRY + _HEADER.size]
    if len(header) != _HEADER.size:
        return None
    magic, length, sum_, key_hash = _HEADER.unpack(header)
    if magic != MAGIC or key_hash != key.digest() or length > key.block_size:
        return None
    data = os.pread(fd, length, slot * key.block_size)
    if len(data) != length or checksum(data) != sum_:
        return None
    return data


def read_run(path: Path, keys: list[BlockKey], first: int, present: list[bool], touch: bool,
             miss: Callable[[int], None], read_only: Callable[[], None]
             ) -> Iterator[bytes | None]:
    """The blocks of ``keys``, in consecutive slots from ``first`` of the group file,
    one by one as they are read, after one read-ahead of all their slots; None for
    each not ``present`` or failing its checks.  ``miss(slot)`` is called for each
    slot that should have been there (every slot when the file cannot be read; a
    damaged block's, whose header is then zeroed).  With ``touch`` the file's mtime
    is set (recency, for eviction after a remount too); a failure costs only that
    recency, and calls ``read_only`` if the filesystem turned read-only."""
    bs = keys[0].block_size
    slots = range(first, first + len(keys))
    fd = trailer = None
    if any(present):
        try:
            fd = os.open(path, os.O_RDONLY)
            # One read-ahead of the whole run, rather than the kernel's slow start.
            os.posix_fadvise(fd, first * bs, len(keys) * bs, os.POSIX_FADV_WILLNEED)
            trailer = read_trailer(fd, bs)
        except OSError as exc:
            log.warning("disk cache: cannot read %s (%s); treating as a miss", path, exc)
            for slot in slots:
                miss(slot)
            if fd is not None:
                os.close(fd)
            fd = None
        if touch and fd is not None:
            try:
                os.utime(fd)
            except OSError as exc:
                log.debug("disk cache: cannot touch %s (%s)", path, exc)
                if exc.errno == errno.EROFS:
                    read_only()
    try:
        for key, slot, indexed in zip(keys, slots, present):
            data = None
            if fd is not None and indexed:
                try:
                    data = read_slot(fd, key, slot, trailer)
                except OSError as exc:
                    log.warning("disk cache: cannot read %s (%s); treating as a miss",
                                path, exc)
                if data is None:
                    log.warning("disk cache: block %d of %s is corrupt; dropping it", slot, path)
                    miss(slot)
                    with contextlib.suppress(OSError):
                        zero_header(path, bs, slot)
            yield data
    finally:
        if fd is not None:
            os.close(fd)


class BlockWriter:
    """Writes blocks' bytes into their slots: with ``O_DIRECT`` while the cache's
    filesystem takes it (``direct``), otherwise through the page cache.  Each
    writing thread has its own aligned buffer."""

    def __init__(self, root: Path, direct: bool = True):
        self.root = root
        self.direct = direct  # cleared if the filesystem refuses O_DIRECT
        self._buffers = threading.local()

    def write(self, path: Path, parts: list, offset: int, block_size: int) -> None:
        """Write consecutive blocks' bytes (``parts``) from ``offset``, each block
        copied once, into an aligned buffer, for an ``O_DIRECT`` write."""
        length = sum(len(d) for d in parts)
        if self.direct and block_size % ALIGN == 0 and length:  # (no empty mapping)
            padded = -(-length // ALIGN) * ALIGN  # the slot has room for it
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
                    write_at(path, view[:padded], offset, os.O_CREAT | os.O_DIRECT)
                return
            except OSError as exc:  # EINVAL: refused, at the open or at the write
                if exc.errno != errno.EINVAL:
                    raise
                self._no_direct(exc)
        write_at(path, parts[0] if len(parts) == 1 else b"".join(parts), offset, os.O_CREAT)

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
        if self.direct:
            log.info("disk cache: %s refuses O_DIRECT writes (%s); writing through the "
                     "page cache", self.root, exc)
        self.direct = False
