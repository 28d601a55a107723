"""The disk tier's index and eviction order (``cache/index.py``): held images and
keep-last blocks."""

from __future__ import annotations

from cache_helpers import key

from imagefs.cache import BlockKey, DiskCache
from imagefs.cache.index import GroupIndex
from imagefs.cache.disk import GROUP_BLOCKS


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


# ---- GroupIndex on its own (no files) ----------------------------------------------------
def test_group_index_pops_by_rank_then_recency_and_pops_whole_image_dirs():
    index = GroupIndex()
    for where in [("a", 0), ("b", 0), ("a", 1), ("b", 1)]:  # least recently used first
        index.stored(where, range(2), 1000)
    assert index.bytes == 8000 and len(index) == 4
    index.hold("a")
    index.keep_last("b", [0])  # block 0: group 0 of b goes after b's others
    assert index.pop_oldest() == (("b", 1), 2000)  # not held, no keep-last
    assert index.pop_oldest(storing="a") == (("a", 0), 2000)  # a's own store: not held
    index.hit(("a", 1), [0])
    assert index.pop_dirs({"a", "c"}) == ([("a", 1)], 2000)
    assert index.bytes == 2000 and index.image_bytes() == {"b": 2000}
    assert index.pop_oldest(keep=("b", 0)) is None
