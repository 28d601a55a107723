"""A real guest boots from an overlay on the mount, against the real Glance.

The guest is the small Debian ``scripts/build-guest`` makes (built once,
then reused from its cache), uploaded as a raw and as a qcow2 image.  Each
boot runs qemu-system-x86_64 on a new qcow2 overlay whose backing file is
``MOUNT/<id>/data`` (see tests/guest.py), and passes when the guest's marker
line appears on its console.  A boot under TCG takes about 25 s, so each
cold boot is made once per module and shared by the tests that need it.

The first boot on a mount records the image's boot profile in its cache
directory; the tests after it boot after a remount, on a second host that
shares that profile directory, with four guests at once, and after
``imagefs prefetch --profile-only``.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
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
    """Boots from overlays on one mount, and what they cost."""

    boots: list[guest.Boot]
    fetched: int  # bytes Glance sent, from the mount's start to its end
    at_marker: int  # of which before the last guest's marker
    read: int  # bytes qemu read from MOUNT/<id>/data (the first guest's)
    size: int  # the image's size
    cache_dir: Path
    replay: dict | None  # the mount's replay of the image's boot profile

    @property
    def boot(self) -> guest.Boot:
        return self.boots[0]

    def report(self, what: str) -> str:
        return (f"\n{what}: marker after {max(b.seconds for b in self.boots):.1f} s "
                f"({self.boot.accel}, {len(self.boots)} guest(s)); Glance sent "
                f"{self.fetched} bytes ({self.fetched - self.at_marker} after the marker), "
                f"qemu read {self.read} bytes of the backing file "
                f"({self.fetched / max(self.read, 1):.2f}x), image {self.size} bytes; "
                f"profile replay {self.replay}")


def replay_of(m: Mount, image_id: str) -> dict | None:
    out = subprocess.run([sys.executable, "-m", "imagefs", "status", str(m.path), "--cache-dir",
                          str(m.cache_dir), "-f", "json"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return next((i.get("profile_replay") for i in json.loads(out.stdout)["images"]
                 if i["id"] == image_id), None)


def boot_on_mount(glance, image_id: str, fmt: str, cache_dir: Path, work: Path,
                  accel: str, *extra: str, guests: int = 1, before=None) -> Booted:
    """Mount on ``cache_dir`` (with ``extra`` options), boot ``guests`` guests of the
    image at once from overlays on it, unmount.  ``before(mount)`` runs first.

    The mount's log is ``<cache_dir>/../<work's name>.log``.
    """
    work.mkdir(parents=True)
    env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url}
    m = Mount(work / work.name, cache_dir, env, *extra)
    at_marker = []
    try:
        data = m.image(image_id) / "data"
        if before is not None:
            before(m)
        glance.reset()
        tops = [guest.overlay(data, fmt, work / f"overlay{i}.qcow2") for i in range(guests)]

        def one(i: int) -> guest.Boot:
            return guest.boot(tops[i], work / f"guest{i}", accel=accel,
                              on_marker=lambda: at_marker.append(glance.stats()["data_bytes"]))
        with concurrent.futures.ThreadPoolExecutor(guests) as pool:
            boots = list(pool.map(one, range(guests)))
        size = data.stat().st_size
        replay = replay_of(m, image_id)
    finally:
        code = m.unmount()
    assert code == 0, m.output()
    assert "Traceback" not in m.output(), m.output()
    return Booted(boots, glance.stats()["data_bytes"], max(at_marker),
                  boots[0].read_bytes(data), size, cache_dir, replay)


@pytest.fixture(scope="module")
def cold_boot(glance, guest_images, accel, tmp_path_factory):
    """cold_boot(fmt) → the boot of that image on a fresh mount with an empty cache.

    Made once per format in the module, whichever test asks first.  Its boot
    profile is in ``<cache_dir>/profiles``.
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
def test_guest_boots_from_an_overlay_on_a_fresh_mount_fetching_little_more_than_it_reads(
        cold_boot, fmt):
    booted = cold_boot(fmt)
    print(booted.report(f"{fmt}, cold"))
    assert booted.read > 0  # the backing file qemu read is the mount's
    assert booted.replay is None  # no profile yet
    assert booted.fetched <= 1.5 * booted.read
    if fmt == "raw":
        assert booted.fetched <= booted.size / 10


def test_a_boot_after_a_remount_fetches_next_to_nothing(cold_boot, glance, guest_images,
                                                         accel, tmp_path):
    """Every block the first boot fetched is in the disk tier; a guest's boots do not
    read quite the same blocks each time (what the kernel's readahead rounds them
    to, what the guest's services read), so a few blocks may be new."""
    first = cold_boot("raw")
    again = boot_on_mount(glance, guest_images["raw"], "raw", first.cache_dir,
                          tmp_path / "remounted", accel)
    print(again.report("raw, after a remount"))
    assert again.read > 0
    assert again.fetched <= first.fetched / 100


def test_a_second_host_sharing_the_profile_dir_fetches_the_boot_ahead_of_it(
        cold_boot, glance, guest_images, accel, tmp_path):
    first = cold_boot("raw")
    second = boot_on_mount(glance, guest_images["raw"], "raw", tmp_path / "cache",
                           tmp_path / "host2", accel,
                           "--profile-dir", str(first.cache_dir / "profiles"))
    print(second.report("raw, a second host with the first one's profile"))
    assert second.replay is not None and second.replay["finished"]
    assert second.replay["failed"] == 0
    assert second.fetched <= 1.05 * first.fetched
    # what the replay did not bring was fetched on demand: a small part of the boot
    assert second.fetched - second.replay["fetched"] <= first.fetched / 10


def test_four_guests_at_once_on_one_mount_cost_about_one_boot(cold_boot, glance, guest_images,
                                                              accel, tmp_path):
    first = cold_boot("raw")
    four = boot_on_mount(glance, guest_images["raw"], "raw", tmp_path / "cache",
                         tmp_path / "four", accel, "--profile-window", "0", guests=4)
    print(four.report("raw, four guests at once on a fresh mount"))
    assert four.fetched <= 1.05 * first.fetched


def test_prefetch_of_the_profile_then_a_boot_fetches_nothing_during_it(
        cold_boot, glance, guest_images, accel, tmp_path):
    first = cold_boot("raw")
    image_id = guest_images["raw"]
    warmed = []

    def prefetch(m: Mount) -> None:
        glance.reset()
        out = subprocess.run([sys.executable, "-m", "imagefs", "prefetch", str(m.path),
                              "guest-raw", "--profile-only", "--cache-dir", str(m.cache_dir)],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        print("\n" + out.stdout.strip())
        warmed.append(glance.stats()["data_bytes"])
    booted = boot_on_mount(glance, image_id, "raw", tmp_path / "cache", tmp_path / "warmed",
                           accel, "--profile-dir", str(first.cache_dir / "profiles"),
                           before=prefetch)
    print(booted.report(f"raw, after imagefs prefetch --profile-only ({warmed[0]} bytes)"))
    assert 0 < warmed[0] <= 1.05 * first.fetched
    assert booted.fetched <= first.fetched / 100
