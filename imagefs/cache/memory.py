"""The memory tier: an LRU of blocks bounded by their total size in bytes."""

from __future__ import annotations

import cachetools

from .keys import BlockKey


class MemoryCache:
    def __init__(self, max_bytes: int):
        self._lru: cachetools.LRUCache = cachetools.LRUCache(maxsize=max_bytes, getsizeof=len)

    @property
    def max_bytes(self) -> int:
        return self._lru.maxsize

    def get(self, key: BlockKey) -> bytes | None:
        return self._lru.get(key)

    def peek(self, key: BlockKey) -> bytes | None:
        """``get`` that leaves the block's place in the LRU as it is."""
        try:
            return cachetools.Cache.__getitem__(self._lru, key)
        except KeyError:
            return None

    def put(self, key: BlockKey, data: bytes) -> None:
        if len(data) <= self._lru.maxsize:
            self._lru[key] = data

    def discard(self, key: BlockKey) -> None:
        self._lru.pop(key, None)

    def discard_image(self, image_id: str) -> None:
        """Forget every block of the image."""
        for key in [k for k in self._lru if k.image_id == image_id]:
            del self._lru[key]

    def image_ids(self) -> set[str]:
        """The images it holds blocks of."""
        return {k.image_id for k in self._lru}

    def clear(self) -> None:
        self._lru.clear()

    def __contains__(self, key: BlockKey) -> bool:
        return key in self._lru

    @property
    def bytes_used(self) -> int:
        return self._lru.currsize
