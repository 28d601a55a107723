"""imagefs.handles: open files, handles rebuilt on demand, the readahead per image.

FileHandles over real records (the in-memory driver) and a block reader that
only counts what it is told (which images are held, described, forgotten).
"""

from __future__ import annotations

import collections
import errno

import pytest
import trio
from conftest import ALICE, FAST_RETRY
from memory_driver import MemoryDriver

from imagefs.api import API
from imagefs.config import KiB, MiB, MountConfig
from imagefs.errors import FsError
from imagefs.handles import DIRECT_FH, FileHandles
from imagefs.inodes import KIND_DATA, KIND_DIR, KIND_META, InodeTable, image_inode
from imagefs.listing import ImageRecords, metadata_bytes


class CountingBlocks:
    def __init__(self):
        self.held = collections.Counter()
        self.described: list[str] = []

    def hold(self, ref):
        self.held[ref.id] += 1

    def unhold(self, ref):
        self.held[ref.id] -= 1

    def describe(self, ref, record):
        self.described.append(ref.id)

    def forget(self, image_id):
        pass


def run(tmp_path, body, **overrides):
    driver = MemoryDriver()
    image = driver.add(b"x" * 100_000, name="one")
    config = MountConfig(**{"cache_dir": tmp_path, "block_size": 64 * KiB,
                            "memory_cache": 1 * MiB, **overrides})
    blocks = CountingBlocks()

    async def main():
        records = ImageRecords(API(driver, retry=FAST_RETRY), ALICE, config, blocks,
                               InodeTable(tmp_path))
        await body(FileHandles(config, blocks, records), records, blocks, image["id"], driver)

    trio.run(main)


def test_the_opens_of_one_image_share_one_readahead_and_o_direct_its_own(tmp_path):
    async def body(handles, records, blocks, image_id, driver):
        image = await records.image(image_id)
        fh1, first = await handles.open(image.ino + KIND_DATA, image, KIND_DATA, direct=False)
        fh2, second = await handles.open(image.ino + KIND_DATA, image, KIND_DATA, direct=False)
        fh3, direct = await handles.open(image.ino + KIND_DATA, image, KIND_DATA, direct=True)
        assert fh1 == fh2 == image.ino + KIND_DATA and fh3 == fh1 | DIRECT_FH
        assert first is second and first.opens == 2 and first.paged
        assert not direct.paged and direct.prefetcher is not first.prefetcher
        assert blocks.held[image_id] == 2  # one state per handle, not per open
        handles.release(fh1)
        assert blocks.held[image_id] == 2 and await handles.get(fh1) is first
        handles.release(fh1)
        handles.release(fh3)
        assert blocks.held[image_id] == 0
        _, again = await handles.open(image.ino + KIND_DATA, image, KIND_DATA, direct=False)
        assert again.prefetcher is not first.prefetcher  # the last release dropped it

    run(tmp_path, body)


def test_with_no_readahead_window_there_is_no_prefetcher(tmp_path):
    async def body(handles, records, blocks, image_id, driver):
        image = await records.image(image_id)
        _, handle = await handles.open(image.ino + KIND_DATA, image, KIND_DATA, direct=False)
        assert handle.prefetcher is None

    run(tmp_path, body, max_readahead=0)


def test_a_handle_an_earlier_daemon_opened_is_rebuilt_once_and_released(tmp_path):
    async def body(handles, records, blocks, image_id, driver):
        fh = image_inode(image_id) + KIND_DATA | DIRECT_FH  # nothing looked up here
        handle = await handles.get(fh)
        assert handle.opens == 1 and not handle.paged and handle.image.id == image_id
        assert await handles.get(fh) is handle and blocks.described == [image_id]
        meta = await handles.get(image_inode(image_id) + KIND_META)
        assert meta.content == metadata_bytes(driver.get(None, image_id))
        handles.release(fh)
        assert blocks.held[image_id] == 0
        for bad in (image_inode(image_id) + KIND_DIR, image_inode(image_id) + 4, 7):
            with pytest.raises(FsError) as e:
                await handles.get(bad)
            assert e.value.errno == errno.EBADF

    run(tmp_path, body)


def test_metadata_is_the_record_as_it_was_at_open(tmp_path):
    async def body(handles, records, blocks, image_id, driver):
        image = await records.image(image_id)
        ino = image.ino + KIND_META
        _, handle = await handles.open(ino, image, KIND_META, direct=True)  # no DIRECT_FH
        before = handle.content
        driver.update(None, image_id, {"name": "renamed"}, {}, False)
        assert (await handles.get(ino)).content == before
        await trio.sleep(records.config.record_ttl)  # the record is fetched again at open
        fh, handle = await handles.open(ino, image, KIND_META, direct=False)
        assert fh == ino and b'"renamed"' in handle.content and handle.opens == 2

    run(tmp_path, body, record_ttl=0.01)
