"""The image service's own data API as a source (imagefs.sources.service)."""

from __future__ import annotations

import os

import pytest
from memory_driver import MemoryDriver

from imagefs import errors
from imagefs.context import RequestContext
from imagefs.sources.service import ServiceSource

CTX = RequestContext.local_admin()
DATA = os.urandom(300_001)


def test_the_service_source_reads_through_its_driver():
    driver = MemoryDriver()
    image_id = driver.add(DATA)["id"]
    source = ServiceSource(driver, CTX, image_id)
    assert source.kind == driver.name and image_id in repr(source)
    assert source.read(100, 50) == DATA[100:150]
    assert b"".join(source.stream(299_990)) == DATA[299_990:]
    assert b"".join(source.stream(10, 20)) == DATA[10:20]
    driver.ranges = False
    with pytest.raises(errors.RangesRefused):  # one try: the caller decides
        source.read(100, 50)
    driver.ranges, driver.fail = True, 1
    with pytest.raises(errors.BackendUnavailable):  # one try: the caller retries
        source.read(0, 1)
    source.close()
