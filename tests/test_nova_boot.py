"""A real guest boots from the instance disk Nova's own code made on the mount.

Nova (tests/nova_host.py) makes the disk with ``cache()`` on the base link
that ``--nova-base-dir`` keeps; qemu then boots it, with qemu's default cache
mode (buffered: the host kernel's readahead runs on the backing file) and with
``cache=none``, as Nova's libvirt driver boots where the instance path
supports O_DIRECT: the backing file is opened O_DIRECT too, and each of
qemu's reads reaches the mount alone, with no kernel readahead.  In both,
Glance sends at most 1.5x what qemu read from the backing file.  Each boot
takes about half a minute under TCG: one per mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import guest
import pytest
from nova_host import NovaHost, base_name
from test_boot import accel, guest_disks  # noqa: F401 (fixtures)
from test_mount import Mount
from test_nova_backend import guest_image, wait_for  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.boot, pytest.mark.mount, pytest.mark.glance]
GiB = 1 << 30


@dataclass
class NovaBoot:
    cache_sent: int   # bytes Glance sent for Nova's cache() (the disk's creation)
    sent: int         # ... and in all, to the guest's power-off
    at_marker: int    # ... of which before the marker
    read: int         # bytes qemu read from the backing file (the link)
    seconds: float    # from the cache() call to the marker
    boot: guest.Boot

    def report(self, what: str) -> str:
        return (f"\n{what}: marker {self.seconds:.1f} s after Nova's cache() "
                f"({self.boot.accel}; the boot {self.boot.seconds:.1f} s); Glance sent "
                f"{self.cache_sent} bytes for cache(), {self.at_marker} to the marker, "
                f"{self.sent} in all; qemu read {self.read} bytes of the backing file "
                f"({self.sent / max(self.read, 1):.2f}x)")


def nova_boot(glance, image_id: str, accel: str, tmp_path, cache: str | None) -> NovaBoot:  # noqa: F811
    host = NovaHost(tmp_path / "instances")
    m = Mount(tmp_path / "mnt", tmp_path / "cache",
              {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url},
              "--nova-base-dir", str(host.base_dir))
    link = host.base_dir / base_name(image_id)
    marker = []
    try:
        wait_for(link.exists)
        glance.reset()
        start = time.monotonic()
        disk = host.spawn_disk(host.instance(image_id), image_id, 4 * GiB,
                               lambda **kw: pytest.fail("Nova downloaded the image"))
        cache_sent = glance.stats()["data_bytes"]
        booted = guest.boot(disk, tmp_path / "guest", accel=accel, cache=cache,
                            on_marker=lambda: marker.append(
                                (time.monotonic() - start, glance.stats()["data_bytes"])))
    finally:
        assert m.unmount() == 0, m.output()
    assert "Traceback" not in m.output()
    return NovaBoot(cache_sent, glance.stats()["data_bytes"], marker[0][1],
                    booted.read_bytes(link), marker[0][0], booted)


@pytest.mark.parametrize("cache", [None, "none"], ids=["buffered", "cache-none"])
def test_a_guest_boots_from_novas_disk_fetching_little_more_than_it_reads(
        glance, guest_image, accel, tmp_path, cache):  # noqa: F811
    booted = nova_boot(glance, guest_image, accel, tmp_path, cache)
    print(booted.report(f"Nova's disk, {'cache=none' if cache else 'buffered'}"))
    assert booted.read > 50 << 20  # the guest's boot read the backing file, the link
    assert booted.sent <= 1.5 * booted.read
