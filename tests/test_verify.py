"""The verifying source wrapper and the hash check of direct bytes."""

from __future__ import annotations

import hashlib
import logging
import random

import trio
from fake_source import FakeSource

from imagefs.sources import closing
from imagefs.sources.verify import VerifyingSource, check, needs_check

BS = 4096


def wrapped(size: int):
    data = random.Random(size).randbytes(size)
    calls = []
    source = VerifyingSource(FakeSource(data), size=size, block_size=BS,
                             on_whole=lambda: calls.append(1))
    return source, data, calls


def test_only_direct_sources_with_a_hash_are_checked():
    source = FakeSource(b"x")
    assert not needs_check(source, "sha512")  # kind "fake": through a service
    source.kind = "rbd"
    assert needs_check(source, "sha512") and not needs_check(source, None)
    source.kind = "file"
    assert needs_check(source, "md5")


def test_whole_once_every_block_passed_by_reads_in_any_order():
    source, data, calls = wrapped(4 * BS + 10)
    assert source.read(2 * BS, BS) == data[2 * BS:3 * BS]
    assert source.read(4 * BS, BS) == data[4 * BS:]  # the short last block counts
    assert source.read(BS + 1, 2 * BS) == data[BS + 1:3 * BS + 1]  # no whole new block
    assert source.read(0, 2 * BS) == data[:2 * BS]
    assert calls == []  # block 3 has not passed whole
    source.read(3 * BS, BS)
    source.read(0, BS)  # again: said once
    assert calls == [1]


def test_a_stream_counts_the_blocks_its_chunks_complete():
    source, data, calls = wrapped(6 * BS)
    got = b"".join(source.stream(0, 6 * BS))  # FakeSource sends 64 KiB chunks: one here
    assert got == data and calls == [1]

    source, data, calls = wrapped(40 * BS)  # three chunks of 16 blocks
    with closing(source.stream(BS + 5, None)) as chunks:
        first = next(chunks)  # blocks 2-16 whole; the consumer stops there
    assert first == data[BS + 5:BS + 5 + 16 * BS]
    assert calls == [] and sorted(source._seen) == list(range(2, 17))


async def _check(data: bytes, blocks: dict[int, bytes | None], value: str):
    async def read_block(index):
        return blocks.get(index)
    return await check("img", "rbd", len(blocks), "sha256", value, read_block)


def test_the_check_hashes_the_blocks_in_order(caplog):
    data = random.Random(1).randbytes(3 * BS + 7)
    blocks = {i: data[i * BS:(i + 1) * BS] for i in range(4)}
    good = hashlib.sha256(data).hexdigest()
    with caplog.at_level(logging.INFO):
        assert trio.run(_check, data, blocks, good) is True
        assert "match its sha256" in caplog.text
        assert trio.run(_check, data, blocks, "0" * 64) is False
        assert "DO NOT MATCH" in caplog.text
        blocks[2] = None
        assert trio.run(_check, data, blocks, good) is None  # evicted: not checked


def test_an_unknown_hash_is_not_checked():
    async def main():
        async def read_block(index):
            raise AssertionError("nothing is read")
        return await check("img", "rbd", 1, "no-such-hash", "x", read_block)
    assert trio.run(main) is None
