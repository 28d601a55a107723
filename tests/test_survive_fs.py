"""What the kernel keeps across daemons: inodes and file handles one ImageFS gave
out mean the same to the next (``imagefs.fs``), with no state carried over but
the cache directory."""

from __future__ import annotations

import errno

import pytest
from conftest import ALICE, BOB, make_image, random_bytes
from test_fs import run_fs

from imagefs.fs import DATA, DIRECT_FH, METADATA, ROOT_INODE, FsError, image_inode


def test_inode_numbers_come_from_the_image_id(backend, tag, tmp_path):
    image = make_image(backend.api, ALICE, tag, data=b"x" * 100)

    async def body(fs):
        d = await fs.lookup(ROOT_INODE, image["id"])
        return d.ino, (await fs.lookup(d.ino, DATA)).ino

    first = run_fs(backend.api, ALICE, tmp_path, body)
    assert first == (image_inode(image["id"]), image_inode(image["id"]) + 2)
    assert run_fs(backend.api, ALICE, tmp_path, body) == first


def test_a_new_daemon_serves_inodes_and_handles_it_never_gave_out(backend, tag, tmp_path):
    data = random_bytes(300_000)
    image = make_image(backend.api, ALICE, tag, data=data)

    async def first(fs):
        d = await fs.lookup(ROOT_INODE, image["id"])
        dat = await fs.lookup(d.ino, DATA)
        meta = await fs.lookup(d.ino, METADATA)
        fh, _ = await fs.open(dat.ino, False)
        direct, _ = await fs.open(dat.ino, False, direct=True)
        mfh, _ = await fs.open(meta.ino, False)
        return d.ino, dat.ino, fh, direct, mfh, meta.size

    d_ino, data_ino, fh, direct, mfh, meta_size = run_fs(backend.api, ALICE, tmp_path, first)
    assert direct == fh | DIRECT_FH

    async def second(fs):  # a new daemon: nothing looked up, nothing opened
        assert (await fs.getattr(data_ino)).size == len(data)
        assert (await fs.lookup(d_ino, DATA)).ino == data_ino
        assert await fs.read(fh, 1000, 5000) == data[1000:6000]
        assert await fs.read(direct, 200_000, 100_000) == data[200_000:300_000]
        assert len(await fs.read(mfh, 0, 1 << 20)) == meta_size
        for h in (fh, direct, mfh, fh):  # one release more than it knows of: ignored
            fs.release(h)
        assert await fs.read(fh, 0, 10) == data[:10]  # rebuilt again
        with pytest.raises(FsError) as e:
            await fs.read((d_ino ^ (1 << 40)) + 2, 0, 10)  # no such image
        assert e.value.errno == errno.EBADF
        with pytest.raises(FsError) as e:
            await fs.getattr(d_ino ^ (1 << 40))
        assert e.value.errno == errno.ENOENT

    run_fs(backend.api, ALICE, tmp_path, second)


def test_an_image_reached_by_id_only_is_found_again_by_the_next_daemon(backend, tag, tmp_path):
    """An image not in the caller's listing (another project's community image) is
    found through the ids recorded in the cache directory."""
    data = random_bytes(10_000)
    image = make_image(backend.api, BOB, tag, data=data, visibility="community")

    async def first(fs):
        assert image["id"] not in await fs.listing()
        d = await fs.lookup(ROOT_INODE, image["id"])
        return (await fs.lookup(d.ino, DATA)).ino

    data_ino = run_fs(backend.api, ALICE, tmp_path, first)

    async def second(fs):
        assert (await fs.getattr(data_ino)).size == len(data)

    run_fs(backend.api, ALICE, tmp_path, second)
