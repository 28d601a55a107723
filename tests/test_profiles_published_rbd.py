"""The three-host case on the RBD-backed Glance, sharing profiles through Glance only.

Host 1 boots the guest (qcow2, read directly from Ceph with ``--direct rbd``)
on a fresh mount and publishes its profile at unmount; hosts 2-4, fresh mounts
with nothing in common, boot at once and replay it.  Glance sends none of the
guest image's bytes: only the published profile's (its JSON, a few KiB each).
"""

from __future__ import annotations

import concurrent.futures

import guest
import pytest
from test_boot import accel, guest_disks, replay_of  # noqa: F401 (fixtures)
from test_boot_rbd import rbd_guest  # noqa: F401 (fixture)
from test_mount import Mount

#: The test Mount does not publish unless asked.
PUBLISH = "--publish-profiles"
from test_rbd import ceph_args, osd_read_bytes

pytestmark = [pytest.mark.boot, pytest.mark.ceph, pytest.mark.mount, pytest.mark.glance]


def boot_hosts(glance, ceph, image_id, work, hosts: list[str], accel: str):  # noqa: F811
    env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url}
    mounts = [Mount(work / h / "mnt", work / h / "cache", env, "--direct", "rbd",
                    *ceph_args(ceph), PUBLISH) for h in hosts]
    glance.reset()
    osd_before = osd_read_bytes(ceph)
    try:
        def one(i: int):
            top = guest.overlay(mounts[i].image(image_id) / "data", "qcow2",
                                work / hosts[i] / "top.qcow2")
            return guest.boot(top, work / hosts[i] / "guest", accel=accel)
        with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
            boots = list(pool.map(one, range(len(hosts))))
        replays = [replay_of(m, image_id) for m in mounts]
    finally:
        for m in mounts:
            assert m.unmount() == 0, m.output()
    for m in mounts:
        assert "Traceback" not in m.output() and "data from rbd" in m.output(), m.output()
    return boots, replays, glance.stats(), osd_read_bytes(ceph) - osd_before


def test_three_hosts_boot_from_rbd_with_the_published_profile_and_glance_sends_no_image_byte(
        glance_rbd, ceph, rbd_guest, accel, tmp_path):  # noqa: F811
    _, [replay], stats, osd = boot_hosts(glance_rbd, ceph, rbd_guest, tmp_path, ["h1"], accel)
    assert replay is None and stats["data_bytes"] == 0 and osd > 0
    boots, replays, stats, osd3 = boot_hosts(glance_rbd, ceph, rbd_guest, tmp_path,
                                             ["h2", "h3", "h4"], accel)
    profile_bytes = stats["data_bytes"] - stats["data_bytes_by_image"].get(rbd_guest, 0)
    print(f"\nrbd, hosts 2-4 at once, host 1's published profile: markers after "
          f"{[round(b.seconds, 1) for b in boots]} s; Glance sent "
          f"{stats['data_bytes_by_image'].get(rbd_guest, 0)} bytes of the image and "
          f"{profile_bytes} of profiles; the OSD read {osd3} bytes ({osd3 / osd:.2f}x one "
          f"boot's, for 3)")
    assert all(r["origin"].startswith("published ") for r in replays)
    assert stats["data_bytes_by_image"].get(rbd_guest, 0) == 0
    assert 0 < profile_bytes < 3 * (64 << 10)
    assert osd3 <= 3.15 * osd
