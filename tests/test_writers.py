"""The writer threads and their queue (``cache/writers.py``), through ``store_later``."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from cache_helpers import key

from imagefs.cache import DiskCache
from imagefs.cache import disk as disk_module
from imagefs.cache import groupfile
from imagefs.cache.disk import GROUP_BLOCKS
from imagefs.cache.writers import WriteQueue


def _eventually(check, timeout: float = 10.0) -> bool:
    """Whether ``check()`` comes true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_store_later_is_written_by_close(tmp_path):
    disk = DiskCache(tmp_path / "c", 64 << 20)
    for i in range(40):
        disk.store_later(key(i), bytes([i]) * 1000)
    disk.close()
    again = DiskCache(tmp_path / "c", 64 << 20)
    assert all(again.load(key(i)) == bytes([i]) * 1000 for i in range(40))


def test_a_full_write_queue_turns_blocks_away_and_says_when_it_has_drained(
        tmp_path, monkeypatch):
    """``store_later`` never waits for the disk: a block that finds ``QUEUED`` bytes
    queued is refused, and ``on_drained`` is called once the writers have emptied
    the queue, so that the caller can offer it again."""
    monkeypatch.setattr(disk_module, "QUEUED", 2000)
    cache = DiskCache(tmp_path / "c", 64 << 20, writers=1)
    gate, drained = threading.Event(), threading.Event()
    real_store_run = cache.store_run
    cache.store_run = lambda run: (gate.wait(10), real_store_run(run))
    cache.on_drained = drained.set
    blocks = {key(2 * i): bytes([i]) * 1000 for i in range(6)}  # none continues another
    took = {k: cache.store_later(k, data) for k, data in blocks.items()}
    refused = [k for k, ok in took.items() if not ok]
    # the writer holds one block at the gate, and the queue takes two more
    assert 2 <= sum(took.values()) <= 3 and refused
    assert not drained.wait(0.2)
    gate.set()
    assert drained.wait(10)  # (one writer: each block it took is written by then)
    assert all((cache.load(k) == blocks[k]) == took[k] for k in blocks)
    for k in refused:  # offered again, one at a time: each once the one before is in
        assert cache.store_later(k, blocks[k])
        assert _eventually(lambda: k in cache)  # noqa: B023 (called at once)
    cache.close()
    assert all(cache.load(k) == blocks[k] for k in blocks)


def test_writers_run_at_the_lowest_cpu_priority(tmp_path):
    cache = DiskCache(tmp_path / "c", 64 << 20, writers=1)
    seen = []
    real_store_run = cache.store_run
    cache.store_run = lambda run: (seen.append(os.getpriority(
        os.PRIO_PROCESS, threading.get_native_id())), real_store_run(run))
    cache.store_later(key(0), b"x" * 100)
    cache.close()
    assert seen == [disk_module.WRITER_NICE] and os.getpriority(os.PRIO_PROCESS, 0) != 19


def test_writer_threads_carry_their_name_in_the_os(tmp_path):
    disk = DiskCache(tmp_path / "c", 64 << 20)
    disk.store_later(key(0), b"x" * 100)
    wanted = {"imagefs-disk-w0", "imagefs-disk-w1"}
    deadline = time.monotonic() + 10
    try:
        while True:  # each thread names itself once it runs, which on a busy machine is later
            names = {(p / "comm").read_text().strip()
                     for p in Path(f"/proc/{os.getpid()}/task").iterdir()}
            if wanted <= names or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    finally:
        disk.close()
    assert wanted <= names


def test_queued_blocks_that_continue_each_other_are_written_together_and_read_back(
        tmp_path, monkeypatch):
    """Two images interleaved, runs across a group boundary, a short last block: each
    block reads back as stored, and consecutive slots of one group take one write."""
    writes = []
    real = groupfile.write_at
    monkeypatch.setattr(groupfile, "write_at",
                        lambda path, data, offset, flags=0: (
                            writes.append((path.name, len(data), flags)),
                            real(path, data, offset, flags))[1])
    cache = DiskCache(tmp_path / "c", 1 << 30, writers=1)
    blocks = {}
    for i in range(GROUP_BLOCKS + 3):
        blocks[key(i)] = os.urandom(64 * 1024)
    blocks[key(GROUP_BLOCKS + 3)] = os.urandom(1000)  # the image's short last block
    blocks[key(5, image="other")] = os.urandom(64 * 1024)
    queue = cache._writes
    with queue._queued:  # queue everything before the writer may take any of it
        for k, data in blocks.items():
            queue._queue.append((k, data))
            queue._queued_bytes += len(data)
    cache.store_later(key(7, image="other"), b"y" * 10)  # starts the writer
    cache.close()
    assert all(cache.load(k) == data for k, data in blocks.items())
    data_writes = [w for w in writes if w[2] & os.O_CREAT]
    # img: group 0 (16 blocks) and group 1 (3 + the short one); other: 5 and 7 apart
    assert len(data_writes) == 4, data_writes
    reopened = DiskCache(tmp_path / "c", 1 << 30)
    assert reopened.load(key(GROUP_BLOCKS + 3)) == blocks[key(GROUP_BLOCKS + 3)]


# ---- WriteQueue on its own (a recording store_run) ---------------------------------------
def test_a_write_queue_hands_runs_of_continuing_blocks_and_calls_drained_once_emptied():
    def small(i):  # blocks of 100 bytes: whole ones continue one another
        return key(i, block_size=100)

    runs, taken, gate, drained = [], threading.Event(), threading.Event(), threading.Event()
    queue = WriteQueue(lambda run: (taken.set(), gate.wait(10),
                                    runs.append([k.index for k, _ in run])),
                       drained.set, threads=1, limit=3 * 100)
    assert queue.put(small(0), b"x" * 100) and taken.wait(10)  # the writer holds it
    took = [queue.put(small(i), b"x" * 100) for i in (1, 2, 3, 4, 5)]
    assert took == [True] * 3 + [False] * 2  # 1, 2 and 3 fill the queue
    assert not drained.wait(0.1)
    gate.set()
    assert drained.wait(10)
    assert runs == [[0], [1, 2, 3]]  # the queued blocks that continue one another: one run
    assert queue.put(small(GROUP_BLOCKS), b"y" * 100) and queue.put(small(GROUP_BLOCKS + 1), b"z")
    queue.close()  # writes what is queued, then stops
    assert runs[2:] in ([[GROUP_BLOCKS, GROUP_BLOCKS + 1]], [[GROUP_BLOCKS], [GROUP_BLOCKS + 1]])
