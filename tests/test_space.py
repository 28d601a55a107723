"""The free-space guard (``cache/space.py``): ``min_free``, a full filesystem and a
read-only one."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import pytest
from cache_helpers import key, warnings

from imagefs.cache import DiskCache
from imagefs.cache import space as space_module
from imagefs.cache.disk import GROUP_BLOCKS
from imagefs.cli import build_parser
from imagefs.config import FreeSpace, parse_free_space
from imagefs.errors import ConfigError
from imagefs.mount import config_from_args


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
    monkeypatch.setattr(space_module, "_now", lambda: now[0], raising=False)
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
