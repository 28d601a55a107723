"""The source interface's helpers (imagefs.sources)."""

from __future__ import annotations

import os

import pytest
from memory_driver import MemoryDriver

from imagefs import errors
from imagefs.context import RequestContext
from imagefs.sources import DIRECT_KINDS, FILE, GLANCE, RBD, closing, skip_bytes, stream_at

CTX = RequestContext.local_admin()
DATA = os.urandom(300_001)


def opener(driver, image_id):
    return lambda offset, end: driver.open_stream(CTX, image_id, offset, end)


@pytest.mark.parametrize("ranges", [True, False])
@pytest.mark.parametrize("offset, end", [(0, None), (5, None), (70_000, 200_000),
                                         (299_999, 400_000), (400_000, 500_000), (7, 7)])
def test_stream_at_gives_the_same_bytes_whether_ranges_are_refused_or_not(ranges, offset, end):
    driver = MemoryDriver()
    image_id = driver.add(DATA)["id"]
    driver.ranges = ranges
    if end is None and offset > len(DATA):
        return
    assert b"".join(stream_at(opener(driver, image_id), offset, end)) == DATA[offset:end]
    if not ranges and offset > 0:  # one refused request, then one from the start
        assert driver.data_requests[-1] == (0, None)


def test_stream_at_asks_for_no_more_than_it_needs():
    driver = MemoryDriver()
    image_id = driver.add(DATA)["id"]
    driver.ranges = False
    chunks = stream_at(opener(driver, image_id), 10, 20)
    assert b"".join(chunks) == DATA[10:20]
    driver.ranges = True
    assert b"".join(stream_at(opener(driver, image_id), 0, 0)) == b""


def test_skip_bytes_past_the_end_is_a_failure_to_retry():
    with pytest.raises(errors.BackendUnavailable, match="5 bytes before"):
        list(skip_bytes([b"abc", b"de"], 10))
    assert b"".join(skip_bytes([b"abc", b"de"], 4)) == b"e"


def test_closing_closes_a_generator():
    closed = []

    def gen():
        try:
            yield b"x"
            yield b"y"
        finally:
            closed.append(True)
    with closing(gen()) as it:
        assert next(it) == b"x"
    assert closed == [True]


def test_kinds():
    assert DIRECT_KINDS == {RBD, FILE} and GLANCE not in DIRECT_KINDS
