"""The block cache tiers, called directly."""

from __future__ import annotations

import os
import stat

from imagefs.cache import BlockKey, DiskCache, MemoryCache
from imagefs.cache.keys import image_version


def key(i, version="v1", image="img"):
    return BlockKey(image, version, 1024, i)


def test_memory_tier_is_bounded_by_bytes_and_lru():
    mem = MemoryCache(3000)
    for i in range(3):
        mem.put(key(i), bytes([i]) * 1000)
    assert mem.get(key(0)) == b"\0" * 1000  # 0 is now the most recent
    mem.put(key(3), b"x" * 1000)
    assert mem.get(key(1)) is None and mem.get(key(0)) is not None
    assert mem.bytes_used <= 3000


def test_disk_tier_round_trip_and_survives_reopen(tmp_path):
    disk = DiskCache(tmp_path / "c", 10_000)
    disk.store(key(1), b"a" * 1000)
    assert disk.load(key(1)) == b"a" * 1000
    assert disk.load(key(2)) is None
    again = DiskCache(tmp_path / "c", 10_000)
    assert key(1) in again and again.load(key(1)) == b"a" * 1000


def test_version_is_part_of_the_key(tmp_path):
    disk = DiskCache(tmp_path / "c", 10_000)
    disk.store(key(1, "v1"), b"old")
    assert disk.load(key(1, "v2")) is None
    assert image_version({"os_hash_value": "abc", "checksum": "m"}) == "abc"
    assert image_version({"checksum": "m"}) == "m"


def test_corrupt_block_is_a_miss_and_is_removed(tmp_path):
    disk = DiskCache(tmp_path / "c", 10_000)
    disk.store(key(1), b"a" * 1000)
    path = disk._path(key(1).digest())
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    assert disk.load(key(1)) is None
    assert not path.exists() and key(1) not in disk
    disk.store(key(2), b"b" * 1000)
    path2 = disk._path(key(2).digest())
    path2.write_bytes(path2.read_bytes()[:100])  # torn
    assert disk.load(key(2)) is None


def test_block_file_moved_under_another_key_is_a_miss(tmp_path):
    disk = DiskCache(tmp_path / "c", 10_000)
    disk.store(key(1), b"one")
    disk.store(key(2), b"two")
    os.replace(disk._path(key(1).digest()), disk._path(key(2).digest()))
    assert disk.load(key(2)) is None


def test_disk_tier_evicts_least_recently_used(tmp_path):
    probe = DiskCache(tmp_path / "probe", 1 << 20)
    probe.store(key(0), b"x" * 1000)
    disk = DiskCache(tmp_path / "c", 3 * probe.bytes_used)  # room for three blocks
    for i in range(3):
        disk.store(key(i), b"x" * 1000)
    disk.load(key(0))
    disk.store(key(3), b"y" * 1000)
    assert key(1) not in disk and disk.load(key(1)) is None
    assert disk.load(key(0)) is not None and disk.load(key(3)) is not None
    assert disk.bytes_used <= disk.max_bytes
    files = [p for p in (tmp_path / "c" / "blocks").rglob("*") if p.is_file()]
    assert len(files) == 3


def test_blocks_of_every_length_round_trip(tmp_path):
    disk = DiskCache(tmp_path / "c", 64 << 20)
    for n in (0, 1, 4095, 4096, 4097, 65536, (1 << 20) - 1, 1 << 20):
        data = os.urandom(n)
        disk.store(key(n), data)
        assert disk.load(key(n)) == data


def test_store_later_is_written_by_close(tmp_path):
    disk = DiskCache(tmp_path / "c", 64 << 20)
    for i in range(40):
        disk.store_later(key(i), bytes([i]) * 5000)
    disk.close()
    again = DiskCache(tmp_path / "c", 64 << 20)
    assert all(again.load(key(i)) == bytes([i]) * 5000 for i in range(40))


def test_cache_files_are_private(tmp_path):
    disk = DiskCache(tmp_path / "c", 10_000)
    disk.store(key(1), b"secret")
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "c" / "blocks").stat().st_mode) == 0o700
    path = disk._path(key(1).digest())
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_leftover_temporary_files_are_cleaned(tmp_path):
    DiskCache(tmp_path / "c", 10_000)
    (tmp_path / "c" / "tmp" / "half").write_bytes(b"x")
    DiskCache(tmp_path / "c", 10_000)
    assert list((tmp_path / "c" / "tmp").iterdir()) == []
