"""The block cache tiers, called directly."""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from imagefs.cache import BlockKey, DiskCache, MemoryCache
from imagefs.cache import disk as disk_module
from imagefs.cache.disk import GROUP_BLOCKS
from imagefs.cache.keys import image_version
from imagefs.cli import build_parser
from imagefs.config import FreeSpace, parse_free_space
from imagefs.errors import ConfigError
from imagefs.mount import config_from_args


def key(i, version="v1", image="img", block_size=64 * 1024):
    return BlockKey(image, version, block_size, i)


def warnings(caplog) -> list[str]:
    return [r.message for r in caplog.records if r.levelno >= logging.WARNING]


def test_memory_tier_is_bounded_by_bytes_and_lru():
    mem = MemoryCache(3000)
    for i in range(3):
        mem.put(key(i), bytes([i]) * 1000)
    assert mem.get(key(0)) == b"\0" * 1000  # 0 is now the most recent
    mem.put(key(3), b"x" * 1000)
    assert mem.get(key(1)) is None and mem.get(key(0)) is not None
    assert mem.bytes_used <= 3000


def test_a_peek_leaves_the_lru_order_as_it_is():
    mem = MemoryCache(3000)
    for i in range(3):
        mem.put(key(i), bytes([i]) * 1000)
    assert mem.peek(key(0)) == b"\0" * 1000 and mem.peek(key(9)) is None
    mem.put(key(3), b"x" * 1000)
    assert mem.get(key(0)) is None and mem.get(key(1)) is not None


def test_disk_tier_round_trip_and_survives_reopen(tmp_path):
    disk = DiskCache(tmp_path / "c", 1 << 20)
    disk.store(key(1), b"a" * 1000)
    assert disk.load(key(1)) == b"a" * 1000
    assert disk.load(key(2)) is None
    again = DiskCache(tmp_path / "c", 1 << 20)
    assert key(1) in again and again.load(key(1)) == b"a" * 1000


def test_version_is_part_of_the_key(tmp_path):
    disk = DiskCache(tmp_path / "c", 1 << 20)
    disk.store(key(1, "v1"), b"old")
    assert disk.load(key(1, "v2")) is None
    assert image_version({"os_hash_value": "abc", "checksum": "m"}) == "abc"
    assert image_version({"checksum": "m"}) == "m"


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


def test_disk_tier_evicts_least_recently_used_groups(tmp_path):
    probe = DiskCache(tmp_path / "probe", 1 << 20)
    probe.store(key(0), b"x" * 1000)
    disk = DiskCache(tmp_path / "c", 3 * probe.bytes_used)  # room for three blocks

    def block(g):  # the first block of group g: one block per group
        return key(g * GROUP_BLOCKS)
    for g in range(3):
        disk.store(block(g), b"x" * 1000)
    disk.load(block(0))
    disk.store(block(3), b"y" * 1000)
    assert block(1) not in disk and disk.load(block(1)) is None
    assert disk.load(block(0)) is not None and disk.load(block(3)) is not None
    assert disk.bytes_used <= disk.max_bytes
    files = [p for p in (tmp_path / "c" / "blocks").rglob("*")
             if p.is_file() and p.name != "image.json"]  # group files, not the index
    assert len(files) == 3
    # Recency survives a remount (files' mtimes): the oldest group goes first.
    os.utime(disk.path(block(3)), (1, 1))
    again = DiskCache(tmp_path / "c", 2 * probe.bytes_used)
    assert block(3) not in again and block(0) in again and block(2) in again


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
        assert disk._direct  # no block, the empty one included, turned it off
    _drop_file_pages(disk, key(0, block_size=1 << 20))
    again = DiskCache(tmp_path / "c", 64 << 20)
    assert all(again.load(k) == data for k, data in blocks.items())


def test_block_data_is_written_around_the_page_cache(tmp_path):
    disk = DiskCache(tmp_path / "c", 64 << 20)
    data = os.urandom(1 << 20)
    disk.store(key(0, block_size=1 << 20), data)
    if not disk._direct:
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
    assert not disk._direct
    assert sum("O_DIRECT" in r.message for r in caplog.records) == 1
    assert all(disk.load(key(i)) == bytes([i + 1]) * 5000 for i in range(3))


def test_store_later_is_written_by_close(tmp_path):
    disk = DiskCache(tmp_path / "c", 64 << 20)
    for i in range(40):
        disk.store_later(key(i), bytes([i]) * 1000)
    disk.close()
    again = DiskCache(tmp_path / "c", 64 << 20)
    assert all(again.load(key(i)) == bytes([i]) * 1000 for i in range(40))


def test_a_full_write_queue_turns_blocks_away_and_says_when_it_has_drained(
        tmp_path, monkeypatch):
    """``store_later`` never waits for the disk: a block that finds ``QUEUED`` bytes
    queued is refused, and ``on_drained`` is called once the writers have emptied
    the queue, so that the caller can offer it again."""
    monkeypatch.setattr(disk_module, "QUEUED", 2000)
    cache = DiskCache(tmp_path / "c", 64 << 20, writers=1)
    gate, drained = threading.Event(), threading.Event()
    real_store_run = cache.store_run
    cache.store_run = lambda run: (gate.wait(10), real_store_run(run))
    cache.on_drained = drained.set
    blocks = {key(2 * i): bytes([i]) * 1000 for i in range(6)}  # none continues another
    took = {k: cache.store_later(k, data) for k, data in blocks.items()}
    refused = [k for k, ok in took.items() if not ok]
    # the writer holds one block at the gate, and the queue takes two more
    assert 2 <= sum(took.values()) <= 3 and refused
    assert not drained.wait(0.2)
    gate.set()
    assert drained.wait(10)
    cache.flush()
    assert all((cache.load(k) == blocks[k]) == took[k] for k in blocks)
    for k in refused:  # offered again, one at a time
        assert cache.store_later(k, blocks[k])
        cache.flush()
    cache.close()
    assert all(cache.load(k) == blocks[k] for k in blocks)


def test_writers_run_at_the_lowest_cpu_priority(tmp_path):
    cache = DiskCache(tmp_path / "c", 64 << 20, writers=1)
    seen = []
    real_store_run = cache.store_run
    cache.store_run = lambda run: (seen.append(os.getpriority(
        os.PRIO_PROCESS, threading.get_native_id())), real_store_run(run))
    cache.store_later(key(0), b"x" * 100)
    cache.close()
    assert seen == [disk_module.WRITER_NICE] and os.getpriority(os.PRIO_PROCESS, 0) != 19


def test_cache_files_are_private(tmp_path):
    disk = DiskCache(tmp_path / "c", 1 << 20)
    disk.store(key(1), b"secret")
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "c" / "blocks").stat().st_mode) == 0o700
    path = disk.path(key(1))
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


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


def test_writer_threads_carry_their_name_in_the_os(tmp_path):
    disk = DiskCache(tmp_path / "c", 64 << 20)
    disk.store_later(key(0), b"x" * 100)
    wanted = {"imagefs-disk-w0", "imagefs-disk-w1"}
    deadline = time.monotonic() + 10
    try:
        while True:  # each thread names itself once it runs, which on a busy machine is later
            names = {(p / "comm").read_text().strip()
                     for p in Path(f"/proc/{os.getpid()}/task").iterdir()}
            if wanted <= names or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    finally:
        disk.close()
    assert wanted <= names


# ---- a directory where a group file belongs ----------------------------------------------
def test_a_directory_where_a_group_file_belongs_is_removed_at_the_scan(tmp_path, caplog):
    root = tmp_path / "c"
    disk = DiskCache(root, 64 << 20)
    disk.store(key(1), b"a" * 1000)
    squatter = disk.path(key(GROUP_BLOCKS))
    squatter.mkdir()
    (squatter / "junk").write_bytes(b"j")
    with caplog.at_level(logging.INFO, logger="imagefs.cache.disk"):
        again = DiskCache(root, 64 << 20)
    assert not squatter.exists()
    assert [r.message for r in caplog.records if str(squatter) in r.message] == [
        f"disk cache: removed the directory {squatter}, where a group file belongs"]
    again.store(key(GROUP_BLOCKS), b"b" * 1000)
    assert DiskCache(root, 64 << 20).load(key(GROUP_BLOCKS)) == b"b" * 1000
    assert again.load(key(1)) == b"a" * 1000


def test_a_store_that_meets_a_directory_in_its_slot_removes_it_and_stores_the_block(
        tmp_path, caplog):
    disk = DiskCache(tmp_path / "c", 64 << 20)
    disk.store(key(1), b"a" * 1000)
    squatter = disk.path(key(GROUP_BLOCKS))
    (squatter / "deeper").mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger="imagefs.cache.disk"):
        disk.store(key(GROUP_BLOCKS), b"b" * 1000)
    assert squatter.is_file() and disk.load(key(GROUP_BLOCKS)) == b"b" * 1000
    assert len(warnings(caplog)) == 1 and "removed the directory" in warnings(caplog)[0]


# ---- free space --------------------------------------------------------------------------
class FakeFilesystem:
    """``os.statvfs`` of ``root`` as if it were on a filesystem of ``size`` bytes, of which
    ``others`` are used by other files and the rest by what is allocated under ``root``."""

    def __init__(self, monkeypatch, root: Path, size: int, others: int, read_only=False):
        self.root, self.size, self.others, self.read_only = root, size, others, read_only
        self.calls = 0
        real = os.statvfs

        def statvfs(path):
            if Path(path) != root:
                return real(path)
            self.calls += 1
            free = self.free() // 4096
            return os.statvfs_result((4096, 4096, size // 4096, free, free, 1000, 900, 900,
                                      os.ST_RDONLY if self.read_only else 0, 255))
        monkeypatch.setattr(os, "statvfs", statvfs)

    def free(self) -> int:
        used = sum(p.stat().st_blocks * 512 for p in self.root.rglob("*") if p.is_file())
        return self.size - self.others - used


@pytest.fixture
def clock(monkeypatch):
    """The disk tier's clock, frozen; advance it with ``clock[0] += seconds``."""
    now = [1000.0]
    monkeypatch.setattr(disk_module, "_now", lambda: now[0], raising=False)
    return now


def test_the_disk_tier_keeps_the_free_space_minimum_by_evicting_old_groups(
        tmp_path, monkeypatch, clock, caplog):
    root = tmp_path / "c"
    root.mkdir()
    fs = FakeFilesystem(monkeypatch, root, size=16 << 20, others=12 << 20)
    disk = DiskCache(root, 1 << 30, min_free=FreeSpace(bytes=1 << 20))  # 3 MiB for blocks
    group = GROUP_BLOCKS * 64 * 1024
    with caplog.at_level(logging.INFO, logger="imagefs.cache.disk"):
        for i in range(6 * GROUP_BLOCKS):  # six groups of 1 MiB, one after another
            disk.store(key(i), os.urandom(64 * 1024))
            assert fs.free() >= 1 << 20, i
            if i == GROUP_BLOCKS * 3:
                statvfs_calls = fs.calls
                clock[0] += 1.5
    assert statvfs_calls <= 2  # at open, then not once per block
    assert fs.calls > statvfs_calls  # read again a second later
    kept = sorted({i // GROUP_BLOCKS for i in range(6 * GROUP_BLOCKS) if key(i) in disk})
    assert kept[0] >= 3 and kept[-1] == 5  # the least recently used went first
    assert all(key(i) in disk for i in range(5 * GROUP_BLOCKS, 6 * GROUP_BLOCKS))
    assert 2 * group <= disk.bytes_used <= 3 * group
    assert warnings(caplog) == []


def test_a_store_with_no_room_and_nothing_to_evict_is_skipped(tmp_path, monkeypatch, caplog):
    root = tmp_path / "c"
    root.mkdir()
    FakeFilesystem(monkeypatch, root, size=100 << 20, others=96 << 20)
    disk = DiskCache(root, 1 << 30, min_free=FreeSpace(percent=5))
    with caplog.at_level(logging.INFO, logger="imagefs.cache.disk"):
        for i in range(20):
            disk.store(key(i), b"x" * 1000)
    assert not any(key(i) in disk for i in range(20))
    assert not [p for p in (root / "blocks").rglob("*") if p.is_file()]
    assert warnings(caplog) == []
    assert sum("nothing left to evict" in r.message for r in caplog.records) == 1


def test_enospc_evicts_and_turns_stores_off_with_one_warning_until_a_recheck(
        tmp_path, monkeypatch, clock, caplog):
    disk = DiskCache(tmp_path / "c", 64 << 20)
    for g in range(3):
        disk.store(key(g * GROUP_BLOCKS), b"x" * 1000)
    real_pwrite = os.pwrite
    writes = []

    def full(fd, data, offset):
        writes.append(offset)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "pwrite", full)
    with caplog.at_level(logging.INFO, logger="imagefs.cache.disk"):
        for i in range(50):
            disk.store(key(3 * GROUP_BLOCKS + i), b"y" * 1000)
        assert len(writes) == 1  # the first failed; the others were not tried
        assert key(0) not in disk and key(GROUP_BLOCKS) in disk  # the oldest group evicted
        assert not any(key(3 * GROUP_BLOCKS + i) in disk for i in range(50))
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        disk.store(key(200), b"z" * 1000)
        assert key(200) not in disk  # off until the next check
        clock[0] += 31
        disk.store(key(200), b"z" * 1000)
        assert disk.load(key(200)) == b"z" * 1000
    assert len(warnings(caplog)) == 1
    assert sum("storing blocks again" in r.message for r in caplog.records) == 1


def test_cache_min_free_takes_a_percentage_or_a_size_and_defaults_to_5_percent():
    assert parse_free_space("5%") == FreeSpace(percent=5) and FreeSpace(percent=5).of(1000) == 50
    assert parse_free_space("512M").of(1 << 40) == 512 << 20
    assert parse_free_space("0").of(1 << 40) == 0
    for bad in ("100%", "five", "-1%", "5 %%"):
        with pytest.raises(ConfigError, match="not a free-space minimum"):
            parse_free_space(bad)
    args = build_parser().parse_args(["mount", "mnt"])
    assert config_from_args(args).cache_min_free == FreeSpace(percent=5)
    args = build_parser().parse_args(["mount", "mnt", "--cache-min-free", "1G"])
    assert config_from_args(args).cache_min_free == FreeSpace(bytes=1 << 30)


# ---- a read-only cache filesystem --------------------------------------------------------
def test_a_cache_whose_filesystem_turns_read_only_serves_what_it_holds_with_one_warning(
        tmp_path, monkeypatch, caplog):
    disk = DiskCache(tmp_path / "c", 64 << 20)
    disk.store(key(0), b"kept" * 100)
    writes = []

    def read_only(fd, data, offset):
        writes.append(offset)
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(os, "pwrite", read_only)
    with caplog.at_level(logging.INFO, logger="imagefs.cache.disk"):
        for i in range(1, 30):
            disk.store(key(i), b"new" * 100)
        assert disk.load(key(0)) == b"kept" * 100
    assert len(writes) == 1 and not any(key(i) in disk for i in range(1, 30))
    assert len(warnings(caplog)) == 1 and "read-only" in warnings(caplog)[0]


def test_a_cache_on_a_read_only_filesystem_starts_with_stores_off(tmp_path, monkeypatch, caplog):
    root = tmp_path / "c"
    DiskCache(root, 64 << 20).store(key(0), b"kept" * 100)
    FakeFilesystem(monkeypatch, root, size=1 << 30, others=0, read_only=True)
    with caplog.at_level(logging.INFO, logger="imagefs.cache.disk"):
        disk = DiskCache(root, 64 << 20)
        monkeypatch.setattr(os, "pwrite", lambda *a: pytest.fail("a write was tried"))
        disk.store(key(1), b"new" * 100)
    assert disk.load(key(0)) == b"kept" * 100 and key(1) not in disk
    assert len(warnings(caplog)) == 1 and "read-only" in warnings(caplog)[0]


@pytest.mark.parametrize("error", [errno.EROFS, errno.EPERM], ids=["erofs", "eperm"])
def test_a_failed_recency_touch_is_not_a_miss(tmp_path, monkeypatch, caplog, error):
    root = tmp_path / "c"
    first = DiskCache(root, 64 << 20)
    first.store(key(1), b"a" * 1000)
    first.store(key(2), b"b" * 1000)
    long_ago = time.time() - 120  # due a touch at the next hit
    os.utime(first.path(key(1)), (long_ago, long_ago))
    disk = DiskCache(root, 64 << 20)

    def refuse(*args, **kwargs):
        raise OSError(error, os.strerror(error))
    monkeypatch.setattr(os, "utime", refuse)
    with caplog.at_level(logging.DEBUG, logger="imagefs.cache.disk"):
        assert disk.load_run([key(1), key(2)]) == [b"a" * 1000, b"b" * 1000]
        assert key(1) in disk and key(2) in disk
        disk.store(key(3), b"c" * 1000)
    assert any("cannot touch" in r.message and r.levelno == logging.DEBUG
               for r in caplog.records)
    if error == errno.EROFS:  # a read-only filesystem: nothing new is stored
        assert key(3) not in disk and len(warnings(caplog)) == 1
    else:
        assert key(3) in disk and warnings(caplog) == []


def test_queued_blocks_that_continue_each_other_are_written_together_and_read_back(
        tmp_path, monkeypatch):
    """Two images interleaved, runs across a group boundary, a short last block: each
    block reads back as stored, and consecutive slots of one group take one write."""
    writes = []
    real = disk_module._write_at
    monkeypatch.setattr(disk_module, "_write_at",
                        lambda path, data, offset, flags=0: (
                            writes.append((path.name, len(data), flags)),
                            real(path, data, offset, flags))[1])
    cache = DiskCache(tmp_path / "c", 1 << 30, writers=1)
    blocks = {}
    for i in range(GROUP_BLOCKS + 3):
        blocks[key(i)] = os.urandom(64 * 1024)
    blocks[key(GROUP_BLOCKS + 3)] = os.urandom(1000)  # the image's short last block
    blocks[key(5, image="other")] = os.urandom(64 * 1024)
    with cache._queued:  # queue everything before the writer may take any of it
        for k, data in blocks.items():
            cache._queue.append((k, data))
            cache._queued_bytes += len(data)
    cache.store_later(key(7, image="other"), b"y" * 10)  # starts the writer
    cache.flush()
    assert all(cache.load(k) == data for k, data in blocks.items())
    data_writes = [w for w in writes if w[2] & os.O_CREAT]
    # img: group 0 (16 blocks) and group 1 (3 + the short one); other: 5 and 7 apart
    assert len(data_writes) == 4, data_writes
    cache.close()
    reopened = DiskCache(tmp_path / "c", 1 << 30)
    assert reopened.load(key(GROUP_BLOCKS + 3)) == blocks[key(GROUP_BLOCKS + 3)]


# ---- which images a cache holds: the index of each image directory ---------------------
def test_an_image_directory_has_an_index_naming_its_image_and_survives_reopen(tmp_path):
    import json

    disk = DiskCache(tmp_path / "c", 1 << 20)
    disk.describe(key(0, image="a"), name="alpine", size=3000, visibility="private")
    disk.store(key(0, image="a"), b"a" * 1000)
    disk.store(key(0, image="b"), b"b" * 1000)  # never described: id, version, block size
    index = json.loads((disk.path(key(0, image="a")).parent / "image.json").read_text())
    assert index == {"id": "a", "version": "v1", "block_size": 64 * 1024, "name": "alpine",
                     "size": 3000, "visibility": "private"}
    again = DiskCache(tmp_path / "c", 1 << 20)
    images = {i.id: i for i in again.images()}
    assert images["a"].name == "alpine" and images["a"].cached_bytes == 64 * 1024
    assert images["b"].name is None and images["b"].version == "v1"
    assert again.dirs_of("a") == [disk.image_dir(key(0, image="a"))]


def test_describing_an_image_later_rewrites_its_index_at_the_next_store(tmp_path):
    import json

    disk = DiskCache(tmp_path / "c", 1 << 20)
    disk.store(key(0), b"a" * 1000)
    index = disk.path(key(0)).parent / "image.json"
    assert json.loads(index.read_text())["name"] is None
    disk.describe(key(0), name="named", size=10)
    disk.store(key(1), b"b" * 1000)
    assert json.loads(index.read_text())["name"] == "named"


def test_evict_dirs_removes_an_image_whole_and_a_later_store_makes_it_again(tmp_path):
    disk = DiskCache(tmp_path / "c", 1 << 20)
    for i in (0, GROUP_BLOCKS):
        disk.store(key(i, image="a"), b"a" * 1000)
        disk.store(key(i, image="b"), b"b" * 1000)
    a_dir = disk.path(key(0, image="a")).parent
    before = disk.bytes_used
    assert disk.evict_dirs(disk.dirs_of("a")) == 2 * 64 * 1024
    assert not a_dir.exists() and disk.bytes_used == before - 2 * 64 * 1024
    assert key(0, image="a") not in disk and disk.load(key(0, image="a")) is None
    assert disk.load(key(GROUP_BLOCKS, image="b")) == b"b" * 1000
    assert disk.dirs_of("a") == []
    disk.store(key(0, image="a"), b"A" * 1000)
    assert (a_dir / "image.json").is_file() and disk.load(key(0, image="a")) == b"A" * 1000


# ---- what is in use: held images, keep-last blocks --------------------------------------
def one_group_bound(tmp_path, groups: int) -> int:
    """The bound that holds ``groups`` groups of one 1000-byte block each."""
    probe = DiskCache(tmp_path / "probe", 1 << 20)
    probe.store(key(0), b"x" * 1000)
    return groups * probe.bytes_used


def group(g: int, image: str) -> BlockKey:
    return key(g * GROUP_BLOCKS, image=image)


def test_eviction_takes_another_images_groups_before_a_held_images(tmp_path):
    disk = DiskCache(tmp_path / "c", one_group_bound(tmp_path, 3))
    disk.store(group(0, "a"), b"a" * 1000)  # the least recently used of all
    disk.store(group(1, "a"), b"a" * 1000)
    disk.hold(group(0, "a"))
    disk.hold(group(5, "a"))  # any block names the image: counted twice now
    disk.store(group(0, "b"), b"b" * 1000)
    disk.store(group(1, "b"), b"b" * 1000)  # over the bound: b's own older group goes
    assert group(0, "a") in disk and group(1, "a") in disk
    assert group(0, "b") not in disk and group(1, "b") in disk
    disk.unhold(group(0, "a"))  # one open left: still held
    disk.store(group(2, "b"), b"b" * 1000)
    assert group(0, "a") in disk and group(1, "a") in disk and group(1, "b") not in disk
    disk.unhold(group(0, "a"))  # closed: plain recency again, a's oldest goes first
    disk.store(group(3, "b"), b"b" * 1000)
    assert group(0, "a") not in disk and group(1, "a") in disk


def test_an_image_being_read_evicts_its_own_older_groups_before_another_open_images(
        tmp_path):
    disk = DiskCache(tmp_path / "c", one_group_bound(tmp_path, 3))
    disk.hold(group(0, "a"))  # open, and idle
    disk.hold(group(0, "b"))  # open, and being read through the cache
    disk.store(group(0, "a"), b"a" * 1000)
    for g in range(4):
        disk.store(group(g, "b"), b"b" * 1000)
    assert group(0, "a") in disk
    assert [g for g in range(4) if group(g, "b") in disk] == [2, 3]


def test_a_held_image_loses_its_oldest_groups_when_nothing_else_is_left(tmp_path):
    disk = DiskCache(tmp_path / "c", one_group_bound(tmp_path, 3))
    disk.hold(group(0, "a"))
    for g in range(4):
        disk.store(group(g, "a"), b"a" * 1000)
    assert [g for g in range(4) if group(g, "a") in disk] == [1, 2, 3]
    assert disk.bytes_used <= disk.max_bytes


def test_keep_last_blocks_go_after_the_rest_of_a_held_image(tmp_path):
    disk = DiskCache(tmp_path / "c", one_group_bound(tmp_path, 3))
    disk.hold(group(0, "a"))
    disk.keep_last(group(0, "a"), [0, 3])  # both in group 0 (a boot profile's blocks)
    for g in range(3):
        disk.store(group(g, "a"), b"a" * 1000)
    disk.store(group(3, "a"), b"a" * 1000)
    disk.store(group(4, "a"), b"a" * 1000)
    assert [g for g in range(5) if group(g, "a") in disk] == [0, 3, 4]
    disk.keep_last(group(0, "a"), [])  # cleared: recency again
    disk.store(group(5, "a"), b"a" * 1000)
    assert group(0, "a") not in disk


def test_an_unheld_images_keep_last_groups_go_after_its_other_unheld_groups(tmp_path):
    disk = DiskCache(tmp_path / "c", one_group_bound(tmp_path, 3))
    disk.keep_last(group(0, "a"), [1])
    disk.store(group(0, "a"), b"a" * 1000)
    disk.store(group(1, "a"), b"a" * 1000)
    disk.store(group(0, "b"), b"b" * 1000)
    disk.store(group(1, "b"), b"b" * 1000)
    assert group(0, "a") in disk and group(1, "a") not in disk
