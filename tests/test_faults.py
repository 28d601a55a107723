"""The fault suite: real mounts on the real Glance, with faults injected by its wrapper.

Each test here is a defect a fault campaign found, kept so that no later
change brings it back.  What each measures is printed (``pytest -s``) as well
as asserted.  Bytes are counted on the server side.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import time

import pytest
from conftest import ALICE, make_image, random_bytes
from test_mount import alice_mounts

from imagefs.api import API
from imagefs.blocks import FAILURE_GRACE
from imagefs.drivers.glance import GlanceDriver

pytestmark = [pytest.mark.mount, pytest.mark.glance]
MiB = 1 << 20


@pytest.fixture(scope="module")
def image(glance, tmp_path_factory):
    """A 64 MiB raw image of random bytes, alice's, and its source file."""
    path = tmp_path_factory.mktemp("faults") / "image.raw"
    path.write_bytes(random_bytes(64 * MiB + 4321))
    api = API(GlanceDriver(glance.url))
    with open(path, "rb") as f:
        image_id = make_image(api, ALICE, "faults", data=f)["id"]
    return {"id": image_id, "path": path, "bytes": path.read_bytes()}


@pytest.fixture
def mounted(glance_clean, tmp_path):
    """mounted(*extra, name=...) -> a Mount as alice; unmounted and checked at teardown."""
    mounts = []
    yield alice_mounts(glance_clean, tmp_path, mounts)
    glance_clean.faults()  # let stalled requests go before unmounting
    for m in mounts:
        assert m.unmount() == 0, m.output()
        assert "Traceback" not in m.output(), m.output()


def timed(fn):
    start = time.monotonic()
    try:
        return fn(), time.monotonic() - start
    except OSError as exc:
        return exc, time.monotonic() - start


def test_a_stall_answers_eio_within_the_read_deadline_buffered_and_direct(
        mounted, image, glance_clean):
    m = mounted("--read-deadline", "5", "--timeout", "60")
    data = m.image(image["id"]) / "data"
    fd = os.open(data, os.O_RDONLY)
    try:
        glance_clean.faults(delay=60)
        # Buffered: the kernel's readahead fails, then it re-reads the page at once.
        buffered, took_buffered = timed(lambda: os.pread(fd, 4096, 37 * MiB))
        assert isinstance(buffered, OSError) and buffered.errno == errno.EIO
        start = time.monotonic()
        direct = subprocess.run(["dd", f"if={data}", "of=/dev/null", "bs=1M", "skip=53",
                                 "count=1", "iflag=direct", "status=none"],
                                capture_output=True, text=True)
        took_direct = time.monotonic() - start
        assert direct.returncode != 0 and "Input/output error" in direct.stderr
        print(f"\n60 s stall, --read-deadline 5: EIO after {took_buffered:.2f} s buffered, "
              f"{took_direct:.2f} s O_DIRECT")
        assert took_buffered <= 5.5 and took_direct <= 5.5
        # The service recovers: the block that failed is fetched anew, at once,
        # rather than joining the request that hung.
        glance_clean.faults()
        time.sleep(FAILURE_GRACE)
        got, took = timed(lambda: os.pread(fd, 4096, 37 * MiB))
        assert got == image["bytes"][37 * MiB:37 * MiB + 4096]
        print(f"after recovery: read in {took:.2f} s")
        assert took < 3
    finally:
        os.close(fd)


def test_an_o_direct_reread_right_after_an_outage_gets_its_bytes(mounted, image, glance_clean):
    """The failure grace answers the kernel's immediate re-read of a failed buffered
    page; an O_DIRECT reader gets no such re-read, so its next read, once the
    service is back, must fetch the block, not fail at once."""
    m = mounted("--read-deadline", "2")
    data = m.image(image["id"]) / "data"

    def dd(skip=21):
        return subprocess.run(["dd", f"if={data}", "of=/dev/stdout", "bs=1M", f"skip={skip}",
                               "count=1", "iflag=direct", "status=none"], capture_output=True)
    assert dd(skip=0).stdout == image["bytes"][:MiB]  # looked up and open before the outage
    glance_clean.faults(down=True)
    failed = dd()
    assert failed.returncode != 0 and b"Input/output error" in failed.stderr
    glance_clean.faults()
    again, took = timed(dd)
    print(f"\nO_DIRECT re-read right after the outage: {took:.2f} s")
    assert again.returncode == 0, again.stderr
    assert again.stdout == image["bytes"][21 * MiB:22 * MiB]


def test_a_direct_whole_image_read_under_connection_resets_is_byte_exact(
        mounted, image, glance_clean, tmp_path):
    m = mounted()
    glance_clean.faults(drop_after=8 * MiB, drop_count=20)
    out = tmp_path / "copy.raw"
    proc = subprocess.run(["qemu-img", "convert", "-T", "none", "-f", "raw", "-O", "raw",
                           str(m.image(image["id"]) / "data"), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    copy = out.read_bytes()  # qemu-img pads a raw image to whole 512-byte sectors
    assert copy[:len(image["bytes"])] == image["bytes"]
    assert not copy[len(image["bytes"]):].strip(b"\0") and len(copy) % 512 == 0
    stats = glance_clean.stats()
    print(f"\nO_DIRECT qemu-img convert under resets after 8 MiB: byte-exact, "
          f"{stats['data_requests']} data requests, {stats['data_bytes'] / MiB:.1f} MiB sent "
          f"for {len(image['bytes']) / MiB:.1f} MiB")
    assert "EIO" not in m.output()


def test_a_read_during_a_burst_of_503s_gets_its_bytes(mounted, image, glance_clean):
    m = mounted("--read-deadline", "30")
    fd = os.open(m.image(image["id"]) / "data", os.O_RDONLY)
    try:
        glance_clean.faults(fail_count=20)
        got, took = timed(lambda: os.pread(fd, 100_000, 9 * MiB + 5))
        assert got == image["bytes"][9 * MiB + 5:9 * MiB + 100_005]
        print(f"\nread during 20 x 503: {took:.2f} s, no EIO")
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [1 * MiB, 4096], ids=["1MiB", "4KiB"])
def test_random_reads_fetch_at_most_1_5x_the_blocks_they_touch(mounted, image, glance_clean,
                                                               size):
    m = mounted()
    source, total = image["bytes"], len(image["bytes"])
    fd = os.open(m.image(image["id"]) / "data", os.O_RDONLY)
    glance_clean.reset()
    rng = random.Random(size)
    touched = set()
    try:
        for _ in range(100):
            offset = rng.randrange(total - size)
            assert os.pread(fd, size, offset) == source[offset:offset + size]
            touched.update(range(offset // MiB, (offset + size - 1) // MiB + 1))
    finally:
        os.close(fd)
    touched_bytes = sum(min(MiB, total - b * MiB) for b in touched)
    sent = glance_clean.stats()["data_bytes"]
    ratio = sent / touched_bytes
    print(f"\n100 random {size}-byte preads: Glance sent {sent / MiB:.1f} MiB for "
          f"{touched_bytes / MiB:.1f} MiB of blocks touched: {ratio:.2f}x")
    assert ratio <= 1.5


def test_names_must_be_whole_uuids_and_missing_ones_are_asked_for_once(
        mounted, image, glance_clean):
    m = mounted("--list-ttl", "30")
    os.listdir(m.path)
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / f"{image['id']}\n")
    assert os.stat(m.image(image["id"])).st_ino  # the id itself resolves
    missing = m.path / "00000000-0000-4000-8000-00000000dead"
    glance_clean.reset()
    for _ in range(200):
        with pytest.raises(FileNotFoundError):
            os.stat(missing)
    calls = glance_clean.stats()["get_requests"]
    print(f"\n200 lookups of a missing id: {calls} Glance call(s)")
    assert calls <= 1
