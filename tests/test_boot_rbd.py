"""Booting the real guest from an RBD-backed Glance: every byte read directly from Ceph.

The guest's qcow2 (its raw disk is the size of the test cluster's memstore)
is uploaded to the Glance that stores on the test Ceph.  Host 1 boots it
from a mount with ``--direct rbd`` and records its boot profile in a shared
profile directory; then three hosts (three mounts, each with an empty cache
of its own and that profile directory) boot it at once.  Glance sends no
data byte to any of them: the OSD's perf counters count what was read.
"""

from __future__ import annotations

import concurrent.futures
import time

import guest
import pytest
from conftest import ALICE, make_image
from test_boot import accel, guest_disks  # noqa: F401 (fixtures)
from test_mount import Mount
from test_rbd import ceph_args, osd_read_bytes

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver

pytestmark = [pytest.mark.boot, pytest.mark.ceph, pytest.mark.mount, pytest.mark.glance]

if not guest.qemu_available():
    pytest.skip("needs qemu-system-x86_64 and qemu-img (scripts/setup installs them)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def rbd_guest(glance_rbd, guest_disks):  # noqa: F811
    api = API(GlanceDriver(glance_rbd.url, timeout=120))
    with open(guest_disks["qcow2"], "rb") as f:
        return make_image(api, ALICE, "boot-rbd", data=f, name="guest-rbd",
                          disk_format="qcow2")["id"]


def boot_hosts(glance, ceph, image_id: str, work, profiles, hosts: int, accel: str):  # noqa: F811
    """``hosts`` mounts booting one guest each, at once; (slowest seconds, Glance's
    data bytes, the OSD's read bytes, qemu's reads of the first backing file)."""
    env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url}
    glance.reset()
    osd_before = osd_read_bytes(ceph)
    start = time.monotonic()
    mounts = [Mount(work / f"host{i}", work / f"cache{i}", env, "--direct", "rbd",
                    "--profile-dir", str(profiles), *ceph_args(ceph)) for i in range(hosts)]
    try:
        def one(i: int):
            data = mounts[i].image(image_id) / "data"
            top = guest.overlay(data, "qcow2", work / f"overlay{i}.qcow2")
            booted = guest.boot(top, work / f"guest{i}", accel=accel)
            return time.monotonic() - start, booted.read_bytes(data)
        with concurrent.futures.ThreadPoolExecutor(hosts) as pool:
            results = list(pool.map(one, range(hosts)))
    finally:
        for m in mounts:
            assert m.unmount() == 0, m.output()
            assert "Traceback" not in m.output(), m.output()
            assert "data from rbd" in m.output(), m.output()
    return (max(s for s, _ in results), glance.stats()["data_bytes"],
            osd_read_bytes(ceph) - osd_before, results[0][1])


def test_three_hosts_with_a_shared_profile_boot_from_rbd_and_glance_sends_nothing(
        glance_rbd, ceph, rbd_guest, accel, tmp_path):  # noqa: F811
    profiles = tmp_path / "profiles"
    seconds, sent, osd, read = boot_hosts(glance_rbd, ceph, rbd_guest, tmp_path / "first",
                                          profiles, 1, accel)
    print(f"\nrbd, host 1: marker after {seconds:.1f} s; Glance sent {sent} data bytes, "
          f"the OSD read {osd} bytes, qemu read {read} bytes of the backing file")
    assert sent == 0 and 0 < osd <= 1.5 * read
    seconds3, sent3, osd3, read3 = boot_hosts(glance_rbd, ceph, rbd_guest, tmp_path / "three",
                                              profiles, 3, accel)
    print(f"rbd, hosts 2-4 at once with host 1's profile: slowest marker after "
          f"{seconds3:.1f} s; Glance sent {sent3} data bytes, the OSD read {osd3} bytes "
          f"({osd3 / osd:.2f}x one boot's, for 3)")
    assert sent3 == 0
    assert osd3 <= 3.15 * osd
