"""Which images a cache holds (``cache/inventory.py``): the index of each image directory."""

from __future__ import annotations

from cache_helpers import key

from imagefs.cache import DiskCache
from imagefs.cache.disk import GROUP_BLOCKS


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
