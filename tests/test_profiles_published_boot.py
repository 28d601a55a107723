"""The real guest on hosts that share nothing but the image service.

Host 1 boots the guest on a fresh mount and publishes its profile at
unmount; hosts 2-4, each a fresh mount with a cache and a profile directory
of its own, then boot at once, and each is ahead of its guest: Glance sends
next to nothing after the last marker.  ``imagefs profile record`` profiles
another image before anyone boots it, and the first boot of it on a fresh
host is as well served.  Guests under TCG take about half a minute each, so
this module boots six in all.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys

import guest
import pytest
from test_boot import accel, boot_on_mount, guest_disks, guest_images, replay_of  # noqa: F401
from test_mount import Mount

#: The test Mount does not publish unless asked.
PUBLISH = "--publish-profiles"

pytestmark = [pytest.mark.boot, pytest.mark.mount, pytest.mark.glance]

#: Bytes Glance may send after the last marker (the guest's power-off path reads a
#: few blocks a boot of a longer window would have recorded); each host fetches its own copy.
AFTER_MARKER = 2 << 20


def boot_hosts(glance, image_id: str, fmt: str, tmp_path, accelerator: str, hosts: list[str]):
    """One fresh mount per host (a cache and a profile directory of its own), one guest
    on each, all at once; [(boot, profile replay)], and Glance's bytes in all and
    before the last marker."""
    env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url}
    mounts = [Mount(tmp_path / h / "mnt", tmp_path / h / "cache", env, PUBLISH)
              for h in hosts]
    at_marker = []
    try:
        tops = [guest.overlay(m.image(image_id) / "data", fmt, tmp_path / h / "top.qcow2")
                for m, h in zip(mounts, hosts)]
        glance.reset()
        with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
            boots = list(pool.map(
                lambda i: guest.boot(tops[i], tmp_path / hosts[i] / "guest", accel=accelerator,
                                     on_marker=lambda: at_marker.append(
                                         glance.stats()["data_bytes"])),
                range(len(hosts))))
        replays = [replay_of(m, image_id) for m in mounts]
    finally:
        for m in mounts:
            assert m.unmount() == 0, m.output()
    for m in mounts:
        assert "Traceback" not in m.output(), m.output()
    return list(zip(boots, replays)), glance.stats()["data_bytes"], max(at_marker)


def test_hosts_2_to_4_boot_at_once_from_host_1s_published_profile(
        glance, guest_images, accel, tmp_path):  # noqa: F811
    image_id = guest_images["raw"]
    [(_, replay)], sent, _ = boot_hosts(glance, image_id, "raw", tmp_path, accel, ["host1"])
    assert replay is None  # nothing was published yet
    assert sent > 0
    booted, sent, at_marker = boot_hosts(glance, image_id, "raw", tmp_path, accel,
                                         ["host2", "host3", "host4"])
    print(f"\nhosts 2-4 at once: markers after {[round(b.seconds, 1) for b, _ in booted]} s; "
          f"Glance sent {sent} bytes, {sent - at_marker} after the last marker; "
          f"replays {[r for _, r in booted]}")
    for _, replay in booted:
        assert replay["origin"].startswith("published ") and replay["failed"] == 0
    assert sent - at_marker <= AFTER_MARKER


def test_profile_record_makes_the_first_boot_on_a_fresh_host_a_profiled_one(
        glance, guest_images, accel, tmp_path):  # noqa: F811
    image_id = guest_images["qcow2"]
    env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url}
    recorder = Mount(tmp_path / "rec", tmp_path / "cache-rec", env, PUBLISH)
    try:
        out = subprocess.run([sys.executable, "-m", "imagefs", "profile", "record",
                              str(recorder.path), image_id, "--publish", "--window", "240",
                              "--cache-dir", str(recorder.cache_dir)],
                             capture_output=True, text=True, timeout=600, check=False)
    finally:
        assert recorder.unmount() == 0, recorder.output()
    print("\n" + out.stdout + out.stderr)
    assert out.returncode == 0, out.stderr
    assert "the guest powered off" in out.stdout and "published" in out.stdout
    fresh = boot_on_mount(glance, image_id, "qcow2", tmp_path / "cache-fresh",
                          tmp_path / "fresh", accel, PUBLISH)
    print(fresh.report("first boot after profile record"))
    assert fresh.replay["origin"].startswith("published ")
    assert fresh.fetched - fresh.at_marker <= AFTER_MARKER
    assert guest.MARKER in fresh.boot.console
