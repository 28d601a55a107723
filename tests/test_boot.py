"""A real guest boots from an overlay on the mount, against the real Glance.

The guest is the small Debian ``scripts/build-guest`` makes (built once,
then reused from its cache), uploaded as a raw and as a qcow2 image.  Each
boot runs qemu-system-x86_64 on a new qcow2 overlay whose backing file is
``MOUNT/<id>/data`` (see tests/guest.py), and passes when the guest's marker
line appears on its console.  A boot under TCG takes about 25 s, so each
cold boot is made once per module and shared by the tests that need it.

A boot after a remount on the same cache directory finds every block the
first boot read in the disk tier, but need not fetch nothing: readahead
(the kernel's on the mount, and the mount's own prefetch streams) runs past
the guest's reads by a different amount in each boot, so a second boot can
ask for blocks just past where the first one's readahead stopped.  Each
further boot fetches less; the test asks for a small fraction of the first.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import guest
import pytest
from conftest import ALICE, make_image
from test_mount import Mount

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver

pytestmark = [pytest.mark.boot, pytest.mark.mount, pytest.mark.glance]

if not guest.qemu_available():
    pytest.skip("needs qemu-system-x86_64 and qemu-img (scripts/setup installs them)",
                allow_module_level=True)

BUILD_GUEST = Path(__file__).resolve().parent.parent / "scripts" / "build-guest"
FORMATS = ("raw", "qcow2")


@pytest.fixture(scope="session")
def guest_disks() -> dict[str, Path]:
    """The guest's disk in each format, built by scripts/build-guest or reused."""
    built = subprocess.run([str(BUILD_GUEST)], check=False, capture_output=True, text=True,
                           timeout=1800)
    assert built.returncode == 0, built.stderr[-4000:]
    raw = Path(built.stdout.split()[-1])
    return {"raw": raw, "qcow2": raw.with_suffix(".qcow2")}


@pytest.fixture(scope="session")
def accel(guest_disks) -> str:
    return guest.accelerator(guest_disks["raw"], "raw")


@pytest.fixture(scope="module")
def guest_images(glance, guest_disks) -> dict[str, str]:
    """Format -> the id of the guest's image in that format, owned by alice."""
    api = API(GlanceDriver(glance.url))
    ids = {}
    for fmt, path in guest_disks.items():
        with open(path, "rb") as f:
            ids[fmt] = make_image(api, ALICE, "boot-tests", data=f, name=f"guest-{fmt}",
                                  disk_format=fmt)["id"]
    return ids


@dataclass
class Booted:
    """A boot from an overlay on a mount, and what it cost."""

    boot: guest.Boot
    fetched: int  # bytes Glance sent, from the mount's start to its end
    read: int  # bytes qemu read from MOUNT/<id>/data
    size: int  # the image's size
    cache_dir: Path

    def report(self, what: str) -> str:
        return (f"\n{what}: marker after {self.boot.seconds:.1f} s ({self.boot.accel}); "
                f"Glance sent {self.fetched} bytes, qemu read {self.read} bytes of the "
                f"backing file, image {self.size} bytes")


def boot_on_mount(glance, image_id: str, fmt: str, cache_dir: Path, work: Path,
                  accel: str) -> Booted:
    """Mount on ``cache_dir``, boot the image from an overlay on it, unmount.

    The mount's log is ``<cache_dir>/../<work's name>.log``.
    """
    work.mkdir(parents=True)
    glance.reset()
    env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url}
    m = Mount(work / work.name, cache_dir, env)
    try:
        data = m.image(image_id) / "data"
        top = guest.overlay(data, fmt, work / "overlay.qcow2")
        booted = guest.boot(top, work, accel=accel)
        size = data.stat().st_size
    finally:
        code = m.unmount()
    assert code == 0, m.output()
    assert "Traceback" not in m.output(), m.output()
    return Booted(booted, glance.stats()["data_bytes"], booted.read_bytes(data), size,
                  cache_dir)


@pytest.fixture(scope="module")
def cold_boot(glance, guest_images, accel, tmp_path_factory):
    """cold_boot(fmt) → the boot of that image on a fresh mount with an empty cache.

    Made once per format in the module, whichever test asks first.
    """
    done: dict[str, Booted] = {}

    def get(fmt: str) -> Booted:
        if fmt not in done:
            work = tmp_path_factory.mktemp(f"cold-{fmt}")
            done[fmt] = boot_on_mount(glance, guest_images[fmt], fmt, work / "cache",
                                      work / "cold", accel)
        return done[fmt]
    yield get
    glance.reset()


@pytest.mark.parametrize("fmt", FORMATS)
def test_guest_boots_from_an_overlay_on_a_fresh_mount(cold_boot, fmt):
    booted = cold_boot(fmt)
    print(booted.report(f"{fmt}, cold"))
    assert booted.read > 0  # the backing file qemu read is the mount's
    assert 0 < booted.fetched < booted.size


def test_a_second_boot_after_a_remount_fetches_little(cold_boot, glance, guest_images, accel,
                                                      tmp_path):
    first = cold_boot("raw")
    again = boot_on_mount(glance, guest_images["raw"], "raw", first.cache_dir,
                          tmp_path / "remounted", accel)
    print(again.report("raw, after a remount"))
    assert again.read > 0
    assert again.fetched <= first.fetched / 4
