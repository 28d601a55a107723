"""Nova's own image code, unchanged, makes instance disks on the links into a real mount.

``tests/nova_host.py`` sets Nova up as on a compute host (``images_type =
qcow2``, privsep in-process as root); the mount runs with ``--nova-base-dir``
on its ``_base`` against the real Glance, serving the test guest's raw disk
(``scripts/build-guest``).  Nova's ``cache()`` finds the link, never calls its
fetch_func, inspects the base and makes a qcow2 overlay on it, for the cost of
a few blocks; Nova's image cache manager then runs over a ``_base`` of links.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import ALICE, make_image
from nova_host import NovaHost, base_name
from test_boot import guest_disks  # noqa: F401 (a fixture)
from test_mount import Mount

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver

pytestmark = [pytest.mark.mount, pytest.mark.glance]
MiB = 1 << 20
GiB = 1 << 30
#: What Nova's format inspection, its qemu-img info and qemu-img create may cost.
FEW_BLOCKS = 2 * MiB


@pytest.fixture(scope="module")
def guest_image(glance, guest_disks) -> str:  # noqa: F811
    api = API(GlanceDriver(glance.url))
    with open(guest_disks["raw"], "rb") as f:
        return make_image(api, ALICE, "nova-tests", data=f, name="nova-guest-raw")["id"]


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def mount_for(host: NovaHost, glance, tmp_path, *extra) -> Mount:
    return Mount(tmp_path / "mnt", tmp_path / "cache",
                 {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url},
                 "--nova-base-dir", str(host.base_dir), *extra)


def test_nova_cache_makes_a_qcow2_overlay_on_the_link_for_a_few_blocks(glance_clean,
                                                                       guest_image, tmp_path):
    host = NovaHost(tmp_path / "instances")
    m = mount_for(host, glance_clean, tmp_path)
    try:
        link = host.base_dir / base_name(guest_image)
        wait_for(link.exists)
        glance_clean.reset()
        called = []
        start = time.time()
        disk = host.spawn_disk(host.instance(guest_image), guest_image, 4 * GiB,
                               lambda **kw: called.append(kw))
        sent = glance_clean.stats()["data_bytes"]
        print(f"\nNova's cache() with the link: Glance sent {sent} bytes "
              f"({sent / MiB:.2f} MiB) for the format inspection, qemu-img info and "
              f"qemu-img create of the base ({time.time() - start:.2f} s)")
        assert called == []  # Nova found its base file: no download
        assert host.backing_file(disk) == str(link)
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)],
                                         capture_output=True, text=True, check=True).stdout)
        assert info["format"] == "qcow2" and info["backing-filename-format"] == "raw"
        assert info["virtual-size"] == 4 * GiB
        assert 0 < sent <= FEW_BLOCKS
        # Nova's inspection, again (an MBR disk is "gpt" to it, allowed for raw images)
        assert host.format_of(link) in ("raw", "gpt")
        assert os.stat(link).st_mtime >= start - 1  # Nova's utime marked it in use
        # A second instance of the image: still no download, next to nothing fetched.
        glance_clean.reset()
        host.spawn_disk(host.instance(guest_image, 2), guest_image, 4 * GiB,
                        lambda **kw: called.append(kw))
        assert called == [] and glance_clean.stats()["data_bytes"] <= FEW_BLOCKS / 4
    finally:
        assert m.unmount() == 0, m.output()
    assert "Traceback" not in m.output()


def test_nova_image_cache_manager_over_links_in_use_and_not(glance_clean, guest_image,
                                                            tmp_path):
    """In-use detection, ageing (utime through the link) and the removal of an
    unused link, which the mount then makes again with the time Nova saw."""
    host = NovaHost(tmp_path / "instances", remove_unused_base_images=True,
                    remove_unused_original_minimum_age_seconds=3600)
    api = API(GlanceDriver(glance_clean.url))
    unused = make_image(api, ALICE, "nova-tests", data=os.urandom(1 * MiB),
                        name="nova-unused")["id"]
    m = mount_for(host, glance_clean, tmp_path)
    try:
        used_link = host.base_dir / base_name(guest_image)
        unused_link = host.base_dir / base_name(unused)
        wait_for(lambda: used_link.exists() and unused_link.exists())
        (host.base_dir / "swap_512").write_bytes(b"\0" * 4096)  # Nova's own, unused, old
        long_ago = time.time() - 10 * 86400
        os.utime(host.base_dir / "swap_512", (long_ago, long_ago))
        running = host.instance(guest_image)
        host.spawn_disk(running, guest_image, 4 * GiB, lambda **kw: pytest.fail("fetched"))
        os.utime(used_link, (long_ago, long_ago))  # explicit times through the link
        os.utime(unused_link, (long_ago, long_ago))
        assert os.stat(used_link).st_mtime == pytest.approx(long_ago, abs=1)
        before = time.time()
        manager = host.cache_pass([running])
        assert str(used_link) in manager.active_base_files  # in use
        assert os.stat(used_link).st_mtime >= before - 1  # ... and aged: utime(None)
        assert not os.path.lexists(unused_link)  # unused and old: Nova removed the link
        assert not os.path.lexists(host.base_dir / "swap_512")  # and its own swap file
        wait_for(unused_link.exists, timeout=10)  # the mount made it again
        assert os.stat(unused_link).st_mtime == pytest.approx(long_ago, abs=1)
        manager = host.cache_pass([running])  # the next pass: the same, no exception
        assert str(used_link) in manager.active_base_files
        assert not os.path.lexists(unused_link)
        assert m.proc.poll() is None
    finally:
        assert m.unmount() == 0, m.output()
    assert "Traceback" not in m.output()
