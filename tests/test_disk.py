"""The disk tier as a whole (``cache/disk.py``): round trips, the LRU bound, the files' modes,
and what the scan and a store clean up inside ``blocks``."""

from __future__ import annotations

import logging
import os
import stat

from cache_helpers import key, warnings

from imagefs.cache import DiskCache
from imagefs.cache.disk import GROUP_BLOCKS
from imagefs.cache.keys import image_version


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


def test_cache_files_are_private(tmp_path):
    disk = DiskCache(tmp_path / "c", 1 << 20)
    disk.store(key(1), b"secret")
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "c" / "blocks").stat().st_mode) == 0o700
    path = disk.path(key(1))
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


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
