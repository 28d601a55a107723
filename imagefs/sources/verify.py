"""Checking what a direct source sends against the image's hash.

Direct sources (``rbd``, ``file``) bypass the image service and its checks.
``VerifyingSource`` wraps one and notes which whole blocks have passed
through it; once every block of the image has, it calls ``on_whole`` (in the
worker thread that read the last one).  The mount then reads the blocks back
from its cache in order and hashes them (``check``).  On a mismatch the
mount drops the image's cached blocks, logs it loudly, and reads the image
through the service from then on.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator

import trio

from . import DIRECT_KINDS, Source, closing

log = logging.getLogger(__name__)

def needs_check(source: Source, hash_algo: str | None) -> bool:
    """Whether the bytes of ``source`` are checked (a direct one, and a hash to check)."""
    return source.kind in DIRECT_KINDS and bool(hash_algo)


class VerifyingSource:
    """``source``, noting the whole blocks that pass; ``on_whole()`` once all have."""

    def __init__(self, source: Source, *, size: int, block_size: int,
                 on_whole: Callable[[], None]):
        self.inner, self.kind = source, source.kind
        self.size, self.block_size = size, block_size
        self.blocks = (size + block_size - 1) // block_size
        self.on_whole = on_whole
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def _passed(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` went out: note the blocks they hold whole."""
        bs = self.block_size
        last = self.blocks if end >= self.size else end // bs
        with self._lock:
            if len(self._seen) == self.blocks:  # whole already (and said so)
                return
            self._seen.update(range(-(-start // bs), last))
            whole = len(self._seen) == self.blocks
        if whole:
            self.on_whole()

    def read(self, offset: int, length: int, timeout: float | None = None) -> bytes:
        data = self.inner.read(offset, length, timeout=timeout)
        self._passed(offset, offset + len(data))
        return data

    def stream(self, offset: int, end: int | None = None,
               timeout: float | None = None) -> Iterator[bytes]:
        with closing(self.inner.stream(offset, end, timeout)) as chunks:
            at = offset
            for chunk in chunks:
                try:
                    yield chunk
                finally:  # the consumer has handed the chunk's blocks on by now
                    at += len(chunk)
                    self._passed(offset, at)

    def close(self) -> None:
        self.inner.close()


async def check(image_id: str, kind: str, blocks: int, hash_algo: str, hash_value: str,
                read_block: Callable[[int], Awaitable[bytes | None]]) -> bool | None:
    """Hash blocks ``0..blocks-1`` as ``read_block`` gives them back.  True if they
    match, False if not (logged loudly), None if they could not be checked."""
    try:
        digest = hashlib.new(hash_algo)
    except ValueError:
        log.info("image %s: cannot check its bytes (unknown hash %s)", image_id, hash_algo)
        return None
    size = 0
    for index in range(blocks):
        data = await read_block(index)
        if data is None:
            log.info("image %s: not checked against its %s: block %d is no longer cached",
                     image_id, hash_algo, index)
            return None
        size += len(data)
        await trio.to_thread.run_sync(digest.update, data)
    if digest.hexdigest() == hash_value:
        log.info("image %s: all %d bytes read from %s match its %s", image_id, size, kind,
                 hash_algo)
        return True
    log.error("image %s: THE BYTES READ FROM %s DO NOT MATCH ITS %s (%s, expected %s); "
              "dropping its cached blocks and reading it through the image service "
              "from now on", image_id, kind.upper(), hash_algo.upper(), digest.hexdigest(),
              hash_value)
    return False
