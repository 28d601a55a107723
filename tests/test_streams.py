"""cut_blocks: chunks of any size into blocks, exactly, never a partial block."""

import random

import pytest

from imagefs.streams import cut_blocks


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
