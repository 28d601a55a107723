"""Boot profiles and ``imagefs prefetch`` through real mounts on the real Glance.

A "boot" here is a fixed set of scattered reads of ``MOUNT/<id>/data`` made
with ``os.pread`` through the kernel (the real guest's boots are in
test_boot.py).  Bytes are the Glance wrapper's count of what it sent.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest
from conftest import ALICE, make_image
from test_mount import Mount

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver

pytestmark = [pytest.mark.mount, pytest.mark.glance]

MiB = 1 << 20
SIZE = 64 * MiB + 4321
#: The "boot": 60 reads of 4-64 KiB spread over the image, and one short run.
_rng = random.Random(7)
READS = [(_rng.randrange(SIZE - 65536) // 4096 * 4096, _rng.choice((4096, 16384, 65536)))
         for _ in range(60)] + [(8 * MiB + i * 65536, 65536) for i in range(16)]


@pytest.fixture(scope="module")
def image(glance, tmp_path_factory):
    data = random.Random(3).randbytes(SIZE)
    api = API(GlanceDriver(glance.url))
    return make_image(api, ALICE, "profiles", data=data, name="profiled")["id"], data


def env(glance):
    return {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url}


def boot(m: Mount, image_id: str, data: bytes) -> None:
    fd = os.open(m.image(image_id) / "data", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no kernel readahead: just these
        for offset, size in READS:
            assert os.pread(fd, size, offset) == data[offset:offset + size]
    finally:
        os.close(fd)


def first_boot(glance, image_id: str, data: bytes, tmp_path):
    """Boot on host 1 with a fresh cache; its profile directory, with the profile."""
    shared = tmp_path / "profiles"
    first = Mount(tmp_path / "host1", tmp_path / "cache1", env(glance),
                  "--profile-dir", str(shared))
    try:
        boot(first, image_id, data)
    finally:
        assert first.unmount() == 0, first.output()
    return shared


def imagefs(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagefs", *args], capture_output=True,
                          text=True, timeout=120, **kw)


def status(m: Mount) -> dict:
    out = imagefs("status", str(m.path), "--cache-dir", str(m.cache_dir), "-f", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for_replay(m: Mount, image_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i in status(m)["images"]:
            if i["id"] == image_id and (i.get("profile_replay") or {}).get("finished"):
                return i["profile_replay"]
        time.sleep(0.2)
    raise AssertionError(f"no finished replay within {timeout} s:\n{m.output()}")


def test_a_second_host_with_the_shared_profile_fetches_nothing_during_its_boot(
        glance, image, tmp_path):
    image_id, data = image
    shared = first_boot(glance, image_id, data, tmp_path)
    shown = imagefs("profile", "show", image_id, "--profile-dir", str(shared), "-f", "json")
    assert shown.returncode == 0, shown.stderr
    profile = json.loads(shown.stdout)[0]
    assert profile["image_id"] == image_id and profile["boots"] == 1
    assert 0 < sum(r[1] for r in profile["ranges"]) < SIZE / 2
    assert len(shown.stdout) < 16 << 10  # a few KiB
    table = imagefs("profile", "show", image_id, "--profile-dir", str(shared))
    assert "boot time covered" in table.stdout

    glance.reset()
    second = Mount(tmp_path / "host2", tmp_path / "cache2", env(glance),
                   "--profile-dir", str(shared))
    try:
        os.close(os.open(second.image(image_id) / "data", os.O_RDONLY))  # qemu-img create
        replay = wait_for_replay(second, image_id)
        prefetched = glance.stats()["data_bytes"]
        boot(second, image_id, data)
        during = glance.stats()["data_bytes"] - prefetched
    finally:
        assert second.unmount() == 0, second.output()
    print(f"\nprofile {sum(r[1] for r in profile['ranges'])} bytes; replay {replay}; "
          f"Glance sent {prefetched} before the boot, {during} during it")
    assert replay["failed"] == 0 and prefetched == replay["fetched"]
    assert during == 0
    assert "Traceback" not in second.output()


def test_prefetch_profile_only_then_whole_image_and_both_survive_a_remount(
        glance, image, tmp_path):
    image_id, data = image
    shared = first_boot(glance, image_id, data, tmp_path)

    # a mount that neither records nor has the image open: prefetch the profile
    cache = tmp_path / "cache2"
    m = Mount(tmp_path / "host2", cache, env(glance), "--profile-dir", str(shared),
              "--profile-window", "0")
    try:
        glance.reset()
        out = imagefs("prefetch", str(m.path), "profiled", "--profile-only",
                      "--cache-dir", str(cache))
        assert out.returncode == 0, out.stderr
        assert image_id in out.stdout and "fetched" in out.stdout
        warmed = glance.stats()["data_bytes"]
        assert 0 < warmed < SIZE / 2
        boot(m, image_id, data)
        assert glance.stats()["data_bytes"] == warmed  # the boot fetched nothing
        missing = imagefs("prefetch", str(m.path), "no-such-name", "--cache-dir", str(cache))
        assert missing.returncode == 2 and "no-such-name" in missing.stderr
        assert "Traceback" not in missing.stderr
    finally:
        assert m.unmount() == 0, m.output()

    m = Mount(tmp_path / "host2", cache, env(glance), "--profile-window", "0")
    try:
        glance.reset()
        boot(m, image_id, data)
        assert glance.stats()["data_bytes"] == 0  # warmed blocks survived the remount
        none = imagefs("prefetch", str(m.path), image_id, "--profile-only",
                       "--cache-dir", str(cache))
        assert none.returncode == 1 and "no boot profile" in none.stderr  # not in its dir
        out = imagefs("prefetch", str(m.path), image_id, "--cache-dir", str(cache))
        assert out.returncode == 0, out.stderr
        whole = glance.stats()["data_bytes"]
        assert whole <= SIZE - warmed + 1  # the cached part cost nothing
    finally:
        assert m.unmount() == 0, m.output()
    m = Mount(tmp_path / "host2", cache, env(glance))
    try:
        glance.reset()
        copy = tmp_path / "copy"
        subprocess.run(["cp", str(m.image(image_id) / "data"), str(copy)], check=True)
        assert copy.read_bytes() == data
        assert glance.stats()["data_bytes"] == 0
    finally:
        assert m.unmount() == 0, m.output()
