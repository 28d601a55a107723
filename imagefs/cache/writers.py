"""The disk tier's writer threads and their queue: stores off the reader's path.

``WriteQueue.put`` queues a block for the writer threads, so that a stream
reading from the network never waits for the disk.  The queue is bounded in
bytes (``limit``); a block that finds it full is not queued, and its caller
may offer it again once the writers have emptied the queue (``drained`` is
called then, in a writer thread).  The writers run at the lowest CPU
priority (``WRITER_NICE``): filling the cache must not slow the reads it is
filled from, so on a busy core they write what the readers leave time for.
A writer takes the queued blocks that continue one another in a group file
together and hands them to ``store_run`` as one run (one write for their
bytes, one for their headers); ``close`` writes what is queued and stops
the threads.  The threads start with the first block queued.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import threading
from collections.abc import Callable

from .groupfile import GROUP_BLOCKS
from .keys import BlockKey

log = logging.getLogger("imagefs.cache.disk")  # the disk tier logs under one name

#: Bytes of blocks queued for the writers before ``put`` turns blocks away.
QUEUED = 16 << 20
#: The writers' nice value: the lowest priority, below every thread serving reads
#: (see docs/performance.md for what it costs and saves).
WRITER_NICE = 19
#: Threads writing queued blocks: two O_DIRECT writes in flight keep a cold read
#: ahead better than one.
WRITERS = 2

Run = list[tuple[BlockKey, bytes]]


def _lower_priority() -> None:
    """This thread at ``WRITER_NICE`` (Linux's nice value is per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)


def _name_os_thread(name: str) -> None:
    """Show this thread's name in ``top -H`` and ``perf`` too: Linux would otherwise
    keep the name of the thread that started it (a trio worker's, "pump from ...")."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _continues(last: tuple[BlockKey, bytes], item) -> bool:
    """Whether queued ``item`` is the block after ``last`` in the same group file
    (and ``last`` a whole block, so that their bytes are contiguous)."""
    if item is None or len(last[1]) != last[0].block_size:
        return False
    (key, _), nxt = last, item[0]
    return (nxt.index == key.index + 1 and nxt.index % GROUP_BLOCKS != 0
            and (nxt.image_id, nxt.version, nxt.block_size)
            == (key.image_id, key.version, key.block_size))


class WriteQueue:
    """Blocks queued for ``threads`` writer threads, which pass runs of them to
    ``store_run``; thread-safe."""

    def __init__(self, store_run: Callable[[Run], None], drained: Callable[[], None], *,
                 threads: int = WRITERS, limit: int = QUEUED):
        self._store_run, self._drained = store_run, drained
        self.threads, self.limit = threads, limit
        # Blocks for the writer threads, oldest first; None tells a writer to stop.
        self._queue: collections.deque = collections.deque()
        self._queued = threading.Condition()
        self._queued_bytes = 0
        self._turned_away = False  # a block found the queue full since it was last empty
        self._writers: list[threading.Thread] = []

    def put(self, key: BlockKey, data: bytes, *, wait: bool = False) -> bool:
        """Queue the block; False: not queued, because ``limit`` bytes are (with
        ``wait``, wait for room instead)."""
        with self._queued:  # several streams may queue their first blocks at once
            if not self._writers:
                self._writers = [threading.Thread(target=self._write_queued, daemon=True,
                                                  name=f"imagefs-disk-w{i}")
                                 for i in range(self.threads)]
                for thread in self._writers:
                    thread.start()
            while self._queued_bytes >= self.limit:
                if not wait:
                    self._turned_away = True
                    return False
                self._queued.wait()
            self._queue.append((key, data))
            self._queued_bytes += len(data)
            self._queued.notify_all()
            return True

    def close(self) -> None:
        """Write every queued block and stop the writer threads."""
        with self._queued:
            for _ in self._writers:
                self._queue.append(None)
            self._queued.notify_all()
        for thread in self._writers:
            thread.join()
        self._writers = []

    def _next_run(self) -> Run | None:
        """Wait for queued blocks; take the first and the blocks queued right behind it
        that continue it in its group file (None: stop).  Under ``_queued``."""
        while not self._queue:
            self._queued.wait()
        if self._queue[0] is None:
            self._queue.popleft()
            return None
        run = [self._queue.popleft()]
        while self._queue and _continues(run[-1], self._queue[0]):
            run.append(self._queue.popleft())
        self._queued_bytes -= sum(len(d) for _, d in run)
        self._queued.notify_all()
        return run

    def _write_queued(self) -> None:
        _name_os_thread(threading.current_thread().name)
        _lower_priority()
        while True:
            with self._queued:
                run = self._next_run()
                if run is None:
                    return
            try:
                self._store_run(run)
            except Exception:  # the writer must outlive any one block, or the queue jams
                log.exception("disk cache: storing a block failed")
            finally:
                with self._queued:
                    drained = self._turned_away and not self._queue
                    if drained:
                        self._turned_away = False
            if drained:
                try:
                    self._drained()
                except Exception:
                    log.exception("disk cache: offering blocks again failed")
