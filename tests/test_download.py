"""The download contract (imagefs.download) against an image service in memory:
verification, the file that appears whole, resumption, the direct hook."""

from __future__ import annotations

import hashlib
import io
import os
import stat

import pytest
from memory_driver import MemoryDriver

from imagefs import errors
from imagefs.context import RequestContext
from imagefs.download import Downloader, Verifier
from imagefs.retry import RetryPolicy

CTX = RequestContext.local_admin()
FAST = RetryPolicy(base_delay=0.001, max_delay=0.01, deadline=5.0)
DATA = os.urandom(1_000_003)


@pytest.fixture
def driver():
    return MemoryDriver()


def test_to_a_file_object_and_the_record_it_was_checked_against(driver):
    record = driver.add(DATA)
    out = io.BytesIO()
    assert Downloader(FAST).download(CTX, driver, record["id"], data=out) == record
    assert out.getvalue() == DATA


def test_to_a_path_the_file_appears_whole_with_the_umasks_mode(driver, tmp_path):
    record = driver.add(DATA)
    seen = []

    def progress(image_id, done, total):
        seen.append((done, total))
        assert not (tmp_path / "img").exists()  # nothing at the path until it is verified
        assert [p.name for p in tmp_path.iterdir()]  # the temporary file, beside it
        mode = stat.S_IMODE(next(tmp_path.iterdir()).stat().st_mode)
        assert mode == 0o600  # others cannot read a half-checked image
    old = os.umask(0o027)
    try:
        Downloader(FAST, progress).download(CTX, driver, record["id"],
                                            dest_path=tmp_path / "img")
    finally:
        os.umask(old)
    assert (tmp_path / "img").read_bytes() == DATA
    assert stat.S_IMODE((tmp_path / "img").stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["img"]
    assert seen[-1] == (len(DATA), len(DATA)) and len(seen) > 1


def test_bad_bytes_leave_nothing_and_keep_the_old_file(driver, tmp_path):
    record = driver.add(DATA)
    driver.data[record["id"]] = DATA[:-1] + b"\0"
    (tmp_path / "img").write_bytes(b"old")
    with pytest.raises(errors.ImageChecksumMismatch, match="sha512"):
        Downloader(FAST).download(CTX, driver, record["id"], dest_path=tmp_path / "img")
    assert os.listdir(tmp_path) == ["img"] and (tmp_path / "img").read_bytes() == b"old"


def test_a_short_image_fails_on_its_size(driver):
    record = driver.add(DATA)
    driver.data[record["id"]] = DATA[:-10]
    out = io.BytesIO()
    with pytest.raises(errors.ImageChecksumMismatch, match="expected 1000003"):
        Downloader(FAST).download(CTX, driver, record["id"], data=out)
    assert out.getvalue() == DATA[:-10]  # what was written stays: the caller's file


@pytest.mark.parametrize("ranges", [True, False])
def test_a_dropped_connection_resumes_where_it_stopped(driver, ranges):
    record = driver.add(DATA)
    driver.ranges, driver.drop_after, driver.drops = ranges, 300_000, 2
    out = io.BytesIO()
    Downloader(FAST).download(CTX, driver, record["id"], data=out)
    assert out.getvalue() == DATA
    if ranges:  # a Range request from the byte reached
        assert driver.data_requests == [(0, None), (300_000, None), (600_000, None)]
    else:  # refused, then a stream from the start, skipped forward (the second
        # reset comes while skipping: the byte reached is still 300,000)
        assert driver.data_requests == [(0, None), (300_000, None), (0, None),
                                        (300_000, None), (0, None)]


def test_resumption_gives_up_with_the_policy(driver):
    record = driver.add(DATA)
    driver.drop_after, driver.drops = 1000, 100
    with pytest.raises(errors.BackendUnavailable):
        Downloader(RetryPolicy(attempts=3, base_delay=0.001)).download(
            CTX, driver, record["id"], data=io.BytesIO())
    assert len(driver.data_requests) == 3


def test_the_destination_is_checked_before_the_service_is_asked(driver, tmp_path):
    record = driver.add(DATA)
    gets = driver.gets
    with pytest.raises(errors.ConfigError, match="does not exist"):
        Downloader(FAST).download(CTX, driver, record["id"], dest_path=tmp_path / "no" / "x")
    with pytest.raises(errors.ConfigError, match="is a directory"):
        Downloader(FAST).download(CTX, driver, record["id"], dest_path=tmp_path)
    with pytest.raises(errors.ImageBadRequest, match="exactly one"):
        Downloader(FAST).download(CTX, driver, record["id"])
    with pytest.raises(errors.ImageBadRequest, match="exactly one"):
        Downloader(FAST).download(CTX, driver, record["id"], io.BytesIO(), tmp_path / "x")
    assert driver.gets == gets and driver.data_requests == []


def test_an_image_without_data_is_no_data(driver):
    record = driver.create(CTX, {"name": "q"}, {})
    with pytest.raises(errors.ImageNoData):
        Downloader(FAST).download(CTX, driver, record["id"], data=io.BytesIO())


def test_the_direct_hook_serves_the_bytes_and_is_closed(driver):
    from fake_source import FakeSource

    record = driver.add(DATA)
    source = FakeSource(DATA)
    source.reset_after, source.reset_count = 100_000, 1
    closed = []
    source.close = lambda: closed.append(True)
    asked = []

    def direct(ctx, image_id, size):
        asked.append((image_id, size))
        return source
    out = io.BytesIO()
    Downloader(FAST, direct=direct).download(CTX, driver, record["id"], data=out)
    assert out.getvalue() == DATA
    assert asked == [(record["id"], len(DATA))] and closed == [True]
    assert driver.data_requests == []  # nothing through the service
    assert source.requests == 2  # resumed once after the reset


def test_no_direct_source_means_the_service(driver):
    record = driver.add(DATA)
    out = io.BytesIO()
    Downloader(FAST, direct=lambda ctx, image_id, size: None).download(
        CTX, driver, record["id"], data=out)
    assert out.getvalue() == DATA and driver.data_requests == [(0, None)]


def test_stream_from_an_offset(driver):
    record = driver.add(DATA)
    driver.ranges = False
    assert b"".join(Downloader(FAST).stream(CTX, driver, record["id"], 777)) == DATA[777:]


def test_the_verifier_prefers_os_hash_then_md5_then_size_alone(caplog):
    data = b"bytes"
    for record, name in [
            ({"id": "i", "size": 5, "os_hash_algo": "sha256",
              "os_hash_value": hashlib.sha256(data).hexdigest(), "checksum": "wrong"}, "sha256"),
            ({"id": "i", "size": 5, "checksum": hashlib.md5(data).hexdigest()}, "md5"),
            ({"id": "i", "size": 5}, None)]:
        verifier = Verifier(record)
        verifier.update(data)
        verifier.check()
        assert (verifier.hash.name if verifier.hash else None) == name
    assert "only its size was verified" in caplog.text
    with pytest.raises(errors.ImageBadRequest, match="unknown hash algorithm"):
        Verifier({"id": "i", "os_hash_algo": "nope", "os_hash_value": "x"})
