"""cut_blocks: chunks of any size into blocks, exactly, never a partial block;
Stream.pump: how much it asks a source for, and how far it reads."""

import random
import threading

import pytest
from fake_source import CHUNK, FakeSource

from imagefs import streams
from imagefs.streams import Stream, cut_blocks


@pytest.mark.parametrize("seed", range(20))
def test_chunks_of_any_size_become_exact_blocks(seed):
    rng = random.Random(seed)
    for _ in range(20):
        size, bs = rng.randrange(0, 50_000), rng.choice([1, 7, 64, 1000, 4096])
        data, first = rng.randbytes(size), rng.randrange(0, 3)

        def length(i):
            return max(0, min(bs, size - i * bs))
        chunks, pos = [], first * bs
        while pos < size:
            n = rng.randrange(1, 3 * bs + 2)
            chunks.append(data[pos:pos + n])
            pos += n
        expect = [(i, data[i * bs:(i + 1) * bs]) for i in range(first, -(-size // bs))]
        assert list(cut_blocks(chunks, first, length)) == expect
        if chunks and len(chunks[-1]) > 1:  # a body cut short: no partial block
            short = chunks[:-1] + [chunks[-1][:-1]]
            assert list(cut_blocks(short, first, length)) == expect[:-1]


# ---- Stream.pump: how much it asks for, and how far it reads --------------------------
BS = 64 << 10


def make_stream(kind: str, blocks: int, limit: int):
    source = FakeSource(random.Random(blocks).randbytes(blocks * BS))
    source.kind = kind
    stream = Stream(source, start=0, limit=limit, blocks=blocks, block_size=BS,
                    size=blocks * BS, seekable=True)
    return source, stream


def test_a_long_read_from_a_service_is_a_few_requests(monkeypatch):
    """The reader's window is raised 4 blocks at a time.  Glance is asked for twice
    the room, and past BULK for twice what was delivered: ~log2 requests."""
    monkeypatch.setattr(streams, "BULK", 64 * BS)
    blocks = 2048
    source, stream = make_stream("glance", blocks, limit=4)
    got = []

    def deliver(index, data):
        got.append((index, data))
        if index + 1 >= stream.limit - 2:  # the reader's prefetcher keeps 2-4 blocks ahead
            stream.extend(index + 5)
    assert stream.pump(0, deliver) == blocks
    assert got == [(i, source.data[i * BS:(i + 1) * BS]) for i in range(blocks)]
    spans = [(end - offset) // BS for offset, end in source.log]
    assert spans[:3] == [4, 8, 8], spans  # twice the room, before BULK
    assert len(spans) <= 30 and max(spans) >= 512, spans
    assert sum(spans) == blocks  # each request starts where the last one stopped


def test_a_cheap_source_is_asked_for_no_more_than_the_limit():
    source, stream = make_stream("rbd", 64, limit=4)

    def deliver(index, data):
        if index + 1 == stream.limit:
            stream.extend(index + 5)
    stream.pump(0, deliver)
    assert all(end - offset <= 4 * BS for offset, end in source.log)


def test_a_stream_at_its_limit_reads_no_further_and_lets_its_response_go(monkeypatch):
    """It asks Glance past its limit, but reads only to it; with no more room within
    STREAM_HOLD it ends the request, and ends when closed."""
    monkeypatch.setattr(streams, "STREAM_HOLD", 0.05)
    monkeypatch.setattr(streams, "STREAM_IDLE", 0.2)
    source, stream = make_stream("glance", 256, limit=8)
    got = []

    def deliver(index, data):
        got.append(index)
        if index == 7:
            stream.extend(12)  # one raise of the limit, then the reader stops
    done = []
    thread = threading.Thread(target=lambda: done.append(stream.pump(0, deliver)))
    thread.start()
    thread.join(5)
    assert done == [12] and got == list(range(12))  # stopped at the limit, idle
    assert source.log == [(0, 8 * BS), (8 * BS, 16 * BS)]  # past the limit: twice its room ...
    # ... and read only to it (cut_blocks takes one chunk past the last block it completes)
    assert source.sent <= 12 * BS + CHUNK


# ---- StreamSet: a stream run for a reader ----------------------------------------------
def test_a_long_stream_logs_its_progress_now_and_then(monkeypatch, caplog):
    import logging

    from test_blocks import data_of, run
    monkeypatch.setattr(streams, "PROGRESS_EVERY", 0.0)  # a line per block, here
    data = data_of(40 * BS)
    source = FakeSource(data)

    async def body(reader, image):
        reader.prefetch(image, 0, len(data))
        assert await reader.read(image, len(data) - 1, 1) == data[-1:]

    with caplog.at_level(logging.INFO, logger="imagefs.streams"):
        run(source, body)
    lines = [r.getMessage() for r in caplog.records if "streaming, at" in r.getMessage()]
    assert lines and lines[-1].startswith("image img: streaming, at 2 of 2 MiB")
