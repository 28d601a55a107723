"""The memory tier (``cache/memory.py``): an LRU bounded by bytes."""

from __future__ import annotations

from cache_helpers import key

from imagefs.cache import MemoryCache


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
