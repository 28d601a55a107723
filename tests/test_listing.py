"""imagefs.listing: what ImageRecords keeps beside its TTLs (test_fs_ttl.py has those):
the data path told of images that go, and inodes resolved for a successor daemon."""

from __future__ import annotations

import errno
import uuid

import pytest
import trio
import trio.testing
from conftest import ALICE, FAST_RETRY
from memory_driver import MemoryDriver

from imagefs.api import API
from imagefs.config import MountConfig
from imagefs.errors import FsError, ImageNotFound
from imagefs.inodes import KIND_DATA, KIND_LINK, InodeTable, image_inode
from imagefs.listing import ImageRecords


class ForgettingBlocks:
    def __init__(self):
        self.forgotten: list[str] = []

    def forget(self, image_id):
        self.forgotten.append(image_id)


def run(tmp_path, body, driver):
    config = MountConfig(cache_dir=tmp_path, list_ttl=10.0, record_ttl=10.0)

    def records(blocks=None):
        return ImageRecords(API(driver, retry=FAST_RETRY), ALICE, config,
                            blocks if blocks is not None else ForgettingBlocks(),
                            InodeTable(tmp_path))

    trio.run(body, records, clock=trio.testing.MockClock(autojump_threshold=0))


def test_images_that_leave_the_listing_or_are_found_gone_are_forgotten(tmp_path):
    driver = MemoryDriver()
    kept, dropped, gone = (driver.add(b"x", name=n)["id"] for n in ("kept", "dropped", "gone"))

    async def body(make):
        blocks = ForgettingBlocks()
        records = make(blocks)
        assert await records.listing() == sorted([kept, dropped, gone])
        assert records.named("kept").id == kept and records.names() == ["dropped", "gone", "kept"]
        driver.delete(None, gone)
        await trio.sleep(10.0)
        with pytest.raises(ImageNotFound):
            await records.image(gone)  # its record is past record_ttl: asked, and gone
        assert blocks.forgotten == [gone] and not records.listed(gone)
        driver.delete(None, dropped)
        await trio.sleep(10.0)
        assert await records.listing() == [kept]
        assert blocks.forgotten == [gone, dropped] and records.get(dropped) is not None

    run(tmp_path, body, driver)


class HidingDriver(MemoryDriver):
    """Lists every image but those in ``hidden`` (reachable by id: shared ones, say)."""

    def __init__(self):
        super().__init__()
        self.hidden: set[str] = set()

    def list(self, ctx, filters, **kwargs):
        return (r for r in super().list(ctx, filters, **kwargs) if r["id"] not in self.hidden)


def test_a_successor_resolves_listed_and_recorded_images_and_nothing_else(tmp_path):
    driver = HidingDriver()
    listed = driver.add(b"x", name="listed")["id"]
    hidden = driver.add(b"y", name="hidden")["id"]
    driver.hidden.add(hidden)

    async def body(make):
        first = make()
        assert await first.listing() == [listed]
        assert (await first.image(hidden)).id == hidden  # reached by id: recorded
        successor = make()  # knows nothing but the listing and the record
        image, kind = await successor.resolve(image_inode(listed) + KIND_LINK)
        assert (image.id, kind) == (listed, KIND_LINK)
        image, kind = await successor.resolve(image_inode(hidden) + KIND_DATA)
        assert (image.id, kind) == (hidden, KIND_DATA)
        for ino in (image_inode(str(uuid.uuid4())), 5):  # nobody's; below the images'
            with pytest.raises(FsError) as e:
                await successor.resolve(ino)
            assert e.value.errno == errno.ENOENT

    run(tmp_path, body, driver)
