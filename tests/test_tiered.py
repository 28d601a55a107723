"""TieredCache: the two tiers behind one interface, and the disk tier's write-behind."""

from __future__ import annotations

import random

import trio

from imagefs.cache import BlockKey, DiskCache, MemoryCache, TieredCache
from imagefs.cache import disk as disk_module

BS = 64 << 10


def key(index: int) -> BlockKey:
    return BlockKey("img", "v1", BS, index)


def block(index: int) -> bytes:
    return random.Random(index).randbytes(BS)


def tiers(tmp_path, memory_blocks: int = 8) -> TieredCache:
    return TieredCache(MemoryCache(memory_blocks * BS), DiskCache(tmp_path / "c", 64 << 20))


def test_without_a_disk_tier_it_misses_and_stores_nothing():
    cache = TieredCache(MemoryCache(4 * BS), None)
    cache.put(key(0), block(0))
    cache.store(key(1), block(1))
    assert cache.get(key(0)) == block(0) and cache.in_memory(key(0))
    assert not cache.on_disk(key(1)) and cache.load(key(1)) is None
    assert list(cache.load_run([key(1), key(2)])) == [None, None]
    assert cache.store_later(key(1), block(1))  # nothing to queue for


def test_a_block_served_whole_leaves_memory_unless_the_disk_is_behind_on_it(tmp_path):
    cache = tiers(tmp_path)

    async def main():
        for i in range(3):
            cache.put(key(i), block(i))
        cache.write_behind(key(1))  # the writers had no room for it
        cache.served_whole(key(0))
        cache.served_whole(key(1))
        assert not cache.in_memory(key(0))  # the page cache has it
        assert cache.in_memory(key(1)) and cache.in_memory(key(2))
        assert cache.unwritten_blocks == 1
        cache.catch_up(wait=True)  # written now, so it leaves too
        assert not cache.in_memory(key(1)) and cache.unwritten_blocks == 0
    trio.run(main)
    cache.close()
    again = DiskCache(tmp_path / "c", 64 << 20)
    assert again.load(key(1)) == block(1) and again.load(key(0)) is None


def test_write_behind_keeps_at_most_half_the_memory_tier(tmp_path):
    cache = tiers(tmp_path, memory_blocks=8)

    async def main():
        for i in range(6):
            cache.put(key(i), block(i))
            cache.write_behind(key(i))
            if i == 0:
                cache.served_whole(key(0))  # the page cache has it: it goes when given up
        return cache.unwritten_blocks, dict(cache.stats), cache.in_memory(key(0)), \
            cache.in_memory(key(1))
    behind, stats, first, second = trio.run(main)
    cache.close()
    assert behind == 4  # half of 8 blocks; the two oldest were given up
    assert stats == {"disk_deferred": 6, "disk_missed": 2}
    assert not first and second  # a given-up block stays in memory unless served whole


def test_a_block_evicted_before_the_writers_caught_up_is_counted_missed(tmp_path):
    cache = tiers(tmp_path)

    async def main():
        cache.put(key(0), block(0))
        cache.write_behind(key(0))
        cache.memory.discard(key(0))  # evicted meanwhile
        cache.catch_up()
        return cache.unwritten_blocks, cache.stats["disk_missed"]
    assert trio.run(main) == (0, 1)
    cache.close()


def test_the_writers_draining_catches_the_disk_tier_up_on_the_trio_thread(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(disk_module, "QUEUED", BS)  # one block fills the writers' queue
    cache = tiers(tmp_path, memory_blocks=16)

    async def main():
        turned_away = None
        for i in range(8):  # as a stream hands blocks over, until one finds no room
            cache.put(key(i), block(i))
            if not cache.store_later(key(i), block(i)):
                cache.write_behind(key(i))  # wires the disk tier's on_drained
                turned_away = i
                break
        assert turned_away is not None and cache.unwritten_blocks == 1
        for _ in range(200):  # the writers drain, and say so; nobody calls catch_up
            if not cache.unwritten_blocks:
                break
            await trio.sleep(0.01)
        return turned_away, cache.unwritten_blocks
    turned_away, behind = trio.run(main)
    cache.close()
    assert behind == 0
    again = DiskCache(tmp_path / "c", 64 << 20)
    assert again.load(key(turned_away)) == block(turned_away)
