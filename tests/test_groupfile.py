"""The group-file format (``cache/groupfile.py``): checks that make a damaged slot a
miss, holes, blocks of every length, and ``O_DIRECT`` writes."""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
from pathlib import Path

import pytest
from cache_helpers import key

from imagefs.cache import BlockKey, DiskCache
from imagefs.cache.disk import GROUP_BLOCKS


def slot_of(disk, k):
    """The group file of block ``k``, where its bytes start and where its header is."""
    _, slot = disk.locate(k)
    return disk.path(k), slot * k.block_size, GROUP_BLOCKS * k.block_size + slot * 64


def patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_corrupt_block_is_a_miss_and_only_that_block_is_dropped(tmp_path):
    disk = DiskCache(tmp_path / "c", 1 << 20)
    disk.store(key(1), b"a" * 1000)
    disk.store(key(2), b"b" * 1000)
    path, data_at, _ = slot_of(disk, key(1))
    patch(path, data_at + 999, b"x")  # the block's last byte
    assert disk.load(key(1)) is None
    assert key(1) not in disk
    assert key(1) not in DiskCache(tmp_path / "c", 1 << 20)  # dropped for good
    assert disk.load(key(2)) == b"b" * 1000  # the same file's other slot is fine
    disk.store(key(1), b"a" * 1000)  # fetched again: stored again
    assert disk.load(key(1)) == b"a" * 1000


def test_half_written_block_is_a_miss(tmp_path):
    disk = DiskCache(tmp_path / "c", 1 << 20)
    disk.store(key(2), b"b" * 1000)
    disk.store(key(3), b"c" * 1000)
    path, data_at, _ = slot_of(disk, key(3))
    patch(path, data_at + 100, bytes(900))  # as if the write stopped at byte 100
    assert disk.load(key(3)) is None
    assert disk.load(key(2)) == b"b" * 1000


def test_slot_copied_under_another_key_is_a_miss(tmp_path):
    disk = DiskCache(tmp_path / "c", 1 << 20)
    disk.store(key(1), b"one")
    disk.store(key(2), b"two")
    path, one, one_header = slot_of(disk, key(1))
    _, two, two_header = slot_of(disk, key(2))
    raw = path.read_bytes()
    patch(path, two, raw[one:one + 3])
    patch(path, two_header, raw[one_header:one_header + 64])
    assert disk.load(key(2)) is None


def test_slots_survive_reopen_and_holes_are_not_blocks(tmp_path):
    disk = DiskCache(tmp_path / "c", 64 << 20)
    kept = [0, 5, GROUP_BLOCKS - 1, GROUP_BLOCKS + 2]
    for i in kept:
        disk.store(key(i), bytes([i]) * 1000)
    again = DiskCache(tmp_path / "c", 64 << 20)
    assert [i for i in range(2 * GROUP_BLOCKS) if key(i) in again] == kept
    assert again.load_run([key(i) for i in range(4, 8)]) == [None, b"\5" * 1000, None, None]
    assert again.bytes_used == disk.bytes_used


def _drop_file_pages(disk: DiskCache, k: BlockKey) -> None:
    """Make the next read of the block's group file come from the disk."""
    fd = os.open(disk.path(k), os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _takes_o_direct(directory: Path) -> bool:
    try:
        os.close(os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
def test_blocks_of_every_length_round_trip(tmp_path, direct):
    disk = DiskCache(tmp_path / "c", 64 << 20, direct=direct)
    blocks = {}
    # a short block is padded to 4 KiB on an O_DIRECT write: its neighbours stay intact
    for i, n in enumerate((0, 1, 4095, 4096, 4097, 65536, (1 << 20) - 1, 1 << 20)):
        blocks[key(i, block_size=1 << 20)] = data = os.urandom(n)
        disk.store(key(i, block_size=1 << 20), data)
    if direct and _takes_o_direct(tmp_path):
        assert disk.direct  # no block, the empty one included, turned it off
    _drop_file_pages(disk, key(0, block_size=1 << 20))
    again = DiskCache(tmp_path / "c", 64 << 20)
    assert all(again.load(k) == data for k, data in blocks.items())


def test_block_data_is_written_around_the_page_cache(tmp_path):
    disk = DiskCache(tmp_path / "c", 64 << 20)
    data = os.urandom(1 << 20)
    disk.store(key(0, block_size=1 << 20), data)
    if not disk.direct:
        pytest.skip(f"{tmp_path} does not take O_DIRECT")
    fd = os.open(disk.path(key(0, block_size=1 << 20)), os.O_RDONLY)
    try:  # no page of the block's bytes is cached: mincore through a mapping
        with mmap.mmap(fd, 1 << 20, flags=mmap.MAP_PRIVATE) as m:
            assert _resident_pages(m) == 0
    finally:
        os.close(fd)
    assert disk.load(key(0, block_size=1 << 20)) == data


def _resident_pages(m: mmap.mmap) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pages = (len(m) + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    start = ctypes.c_char.from_buffer(m)  # no page is touched: only its address is taken
    try:
        if libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(len(m)),
                        vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
    finally:
        del start
    return sum(v & 1 for v in vec)


def test_a_filesystem_without_o_direct_is_written_through_the_page_cache(
        tmp_path, monkeypatch, caplog):
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    disk = DiskCache(tmp_path / "c", 64 << 20)
    with caplog.at_level(logging.INFO, logger="imagefs.cache.disk"):
        for i in range(3):
            disk.store(key(i), bytes([i + 1]) * 5000)
    assert not disk.direct
    assert sum("O_DIRECT" in r.message for r in caplog.records) == 1
    assert all(disk.load(key(i)) == bytes([i + 1]) * 5000 for i in range(3))


def test_a_short_write_leaves_no_block(tmp_path, monkeypatch):
    """A full cache disk can write part of a block: that block is not cached."""
    disk = DiskCache(tmp_path / "c", 64 << 20)
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: real_pwrite(
        fd, memoryview(data)[:len(data) // 2], offset))
    disk.store(key(0), b"z" * 8192)
    monkeypatch.undo()
    assert key(0) not in disk and disk.load(key(0)) is None
    again = DiskCache(tmp_path / "c", 64 << 20)
    assert key(0) not in again and again.load(key(0)) is None
