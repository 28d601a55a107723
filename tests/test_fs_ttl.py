"""The filesystem's TTLs, exact and instant: ImageFS over the in-memory driver on
trio's MockClock.

What the filesystem asks of the image service is counted on the driver
(``lists``, ``gets``), and each test sleeps explicitly short of a TTL or past
it.  Worker threads still run for real: fs calls the API through
``trio.to_thread``, and under autojump the clock may move while a call waits
on its thread.  That cannot decide a check here: the filesystem stamps a
listing, a record or a miss after its call returned, and every timed check
below is made by a call whose TTL test comes before any thread (``listing``,
``getattr``, ``image_ref``), right after an explicit sleep.

The real-service versions in test_fs.py keep what only a real Glance or
store shows (what they answer for a deleted image, a listing in real time
next to a slow fetch), without sleeping past a TTL.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import uuid

import pytest
import trio
import trio.testing
from conftest import ALICE, FAST_RETRY
from memory_driver import MemoryDriver
from test_fs import run_fs

from imagefs import errors
from imagefs.api import API
from imagefs.fs import BY_NAME_INODE, DATA, METADATA, ROOT_INODE, FsError
from imagefs.retry import RetryPolicy

LIST_TTL, RECORD_TTL = 30.0, 5.0
EPS = 0.001  # seconds short of a TTL, or past it


def run(driver, tmp_path, body, retry=FAST_RETRY):
    driver.gets = driver.lists = 0  # what the filesystem asks, not the test's setup
    return run_fs(API(driver, retry=retry), ALICE, tmp_path, body,
                  clock=trio.testing.MockClock(autojump_threshold=0),
                  list_ttl=LIST_TTL, record_ttl=RECORD_TTL, cache_size=0)


def test_a_listing_is_trusted_for_list_ttl_then_fetched_again(tmp_path):
    driver = MemoryDriver()
    first = driver.add(b"first", name="first")["id"]

    async def body(fs):
        assert await fs.listing() == [first]
        assert driver.lists == 1
        second = driver.add(b"second", name="second")["id"]
        await trio.sleep(LIST_TTL - EPS)
        assert await fs.listing() == [first]  # trusted: the service is not asked
        by_name = await fs.opendir(BY_NAME_INODE)
        assert [name for name, _, _ in fs.readdir(by_name, 0)] == ["first"]
        assert driver.lists == 1
        await trio.sleep(2 * EPS)
        assert await fs.listing() == sorted([first, second])
        assert driver.lists == 2
        driver.delete(None, first)
        await trio.sleep(LIST_TTL - EPS)
        assert await fs.listing() == sorted([first, second])
        assert driver.lists == 2
        await trio.sleep(2 * EPS)
        assert await fs.listing() == [second]
        assert await fs.listing() == [second]  # the new listing, trusted anew
        assert driver.lists == 3

    run(driver, tmp_path, body)


def test_a_record_is_trusted_for_record_ttl_then_fetched_again(tmp_path):
    driver = MemoryDriver()
    image_id = driver.add(b"x" * 1000, name="one")["id"]

    async def body(fs):
        d = await fs.lookup(ROOT_INODE, image_id)  # the listing brings the record
        meta = await fs.lookup(d.ino, METADATA)
        data = await fs.lookup(d.ino, DATA)
        assert driver.gets == 0
        driver.update(None, image_id, {"name": "a longer name"}, {}, False)
        await trio.sleep(RECORD_TTL - EPS)
        assert (await fs.getattr(meta.ino)).size == meta.size  # trusted
        fh, _ = await fs.open(meta.ino, False)
        assert json.loads(await fs.read(fh, 0, 1 << 20))["name"] == "one"
        assert driver.gets == 0
        await trio.sleep(2 * EPS)
        fresh = await fs.getattr(meta.ino)
        assert driver.gets == 1
        fh, _ = await fs.open(meta.ino, False)
        content = await fs.read(fh, 0, 1 << 20)
        assert json.loads(content)["name"] == "a longer name"
        assert fresh.size == len(content) > meta.size
        assert driver.gets == 1  # the new record, trusted anew
        await trio.sleep(RECORD_TTL + EPS)
        assert (await fs.getattr(data.ino)).size == 1000  # a data file's never changes
        assert driver.gets == 1
        await fs.getattr(d.ino)  # the directory's follows the record
        assert driver.gets == 2
        assert driver.lists == 1  # all within list_ttl

    run(driver, tmp_path, body)


def test_a_deleted_image_answers_from_its_record_until_record_ttl(tmp_path):
    driver = MemoryDriver()
    image_id = driver.add(b"gone soon")["id"]

    async def body(fs):
        d = await fs.lookup(ROOT_INODE, image_id)
        data = await fs.lookup(d.ino, DATA)
        driver.delete(None, image_id)
        await trio.sleep(RECORD_TTL - EPS)
        assert (await fs.getattr(d.ino)).ino == d.ino
        assert driver.gets == 0
        await trio.sleep(2 * EPS)
        with pytest.raises(errors.ImageNotFound):
            await fs.getattr(d.ino)
        assert driver.gets == 1
        # Gone from the listing at once, without asking for a new one.
        assert image_id not in await fs.listing()
        assert driver.lists == 1
        assert (await fs.getattr(data.ino)).size == len(b"gone soon")  # an open file's

    run(driver, tmp_path, body)


def test_a_missing_id_is_not_asked_for_again_within_list_ttl(tmp_path):
    driver = MemoryDriver()
    driver.add(b"present")
    missing = str(uuid.uuid4())

    async def body(fs):
        with pytest.raises(errors.ImageNotFound):
            await fs.lookup(ROOT_INODE, missing)  # not listed: the service is asked
        assert driver.gets == 1
        await trio.sleep(LIST_TTL - EPS)
        with pytest.raises(errors.ImageNotFound):
            await fs.image_ref(missing)
        assert driver.gets == 1
        await trio.sleep(2 * EPS)
        with pytest.raises(errors.ImageNotFound):
            await fs.image_ref(missing)
        assert driver.gets == 2
        with pytest.raises(errors.ImageNotFound):
            await fs.image_ref(missing)  # the new miss, remembered anew
        assert driver.gets == 2
        with pytest.raises(FsError) as e:
            await fs.lookup(ROOT_INODE, "not-an-image-id")  # never asked for at all
        assert e.value.errno == errno.ENOENT and driver.gets == 2

    run(driver, tmp_path, body)


def test_a_stale_listing_is_served_and_logged_when_the_service_fails(tmp_path, caplog):
    driver = MemoryDriver()
    first = driver.add(b"first")["id"]

    async def body(fs):
        assert await fs.listing() == [first]
        second = driver.add(b"second")["id"]
        driver.fail_listings = 2
        await trio.sleep(LIST_TTL + EPS)
        with caplog.at_level(logging.WARNING, logger="imagefs.fs"):
            assert await fs.listing() == [first]  # the stale one, not an error
            assert (await fs.lookup(ROOT_INODE, first)).ino  # its images still found
        assert driver.lists == 3  # a failed refresh is not trusted: each call tries
        warnings = [r.getMessage() for r in caplog.records if r.name == "imagefs.fs"]
        assert len(warnings) == 2  # one line for each listing served stale
        for message in warnings:
            assert message.startswith("cannot refresh the image listing (")
            assert "injected 503 to a listing" in message and "\n" not in message
            assert int(re.search(r"from (\d+)s ago", message).group(1)) >= LIST_TTL
        assert await fs.listing() == sorted([first, second])  # the service is back
        assert await fs.listing() == sorted([first, second])
        assert driver.lists == 4

    run(driver, tmp_path, body, retry=RetryPolicy(attempts=1))  # a call is one listing


def test_with_no_listing_yet_a_failing_service_is_an_error(tmp_path):
    driver = MemoryDriver()
    driver.add(b"unseen")
    driver.fail_listings = 1

    async def body(fs):
        with pytest.raises(errors.BackendUnavailable):
            await fs.listing()
        assert driver.lists == 1
        assert len(await fs.listing()) == 1  # nothing was trusted: asked again at once
        assert driver.lists == 2

    run(driver, tmp_path, body, retry=RetryPolicy(attempts=1))
