"""Booting a VM from Glance: download first, or boot lazily from imagefs.

Builds (or reuses) the test guest with scripts/build-guest, starts a real
Glance on loopback (tests/glance_server.py) and uploads the guest's raw
disk.  Then, on a link limited to --rate (the Glance wrapper's ``rate``,
shared by all data responses) and again with no limit, it measures in the
same run:

  (a) download   curl the whole image from Glance to a local file, then boot
                 from a qcow2 overlay on that file
  (b) imagefs    mount with an empty cache, then boot from a qcow2 overlay
                 on MOUNT/<id>/data

Each case starts with the page cache dropped and ends when the guest's
marker appears on its console; its time includes the download, or the
mount, and the overlay's creation.  Printed per case: that time, the boot's
part of it, the bytes Glance sent, and the bytes qemu read from the backing
file (tests/guest.py counts them with qemu's trace events); then the ratio
of (b)'s time to (a)'s.  With --reps N, the medians of N alternating pairs.
Needs root (the build, the page cache, the mount).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import guest  # noqa: E402
from bench import ALICE, Mount, drop_page_cache  # noqa: E402
from glance_server import GlanceServer  # noqa: E402

from imagefs.api import API  # noqa: E402
from imagefs.drivers.glance import GlanceDriver  # noqa: E402

MB = 1000 * 1000
TOKEN = "alice-token"


def build_guest() -> Path:
    built = subprocess.run([str(ROOT / "scripts" / "build-guest")], stdout=subprocess.PIPE,
                           text=True, check=True)
    return Path(built.stdout.split()[-1])


def fresh_start(glance: GlanceServer, rate: float | None) -> None:
    """The page cache dropped, Glance's counters zeroed and its link set to ``rate``."""
    drop_page_cache()
    glance.reset()
    if rate:
        glance.faults(rate=rate)


def download_then_boot(work: Path, glance: GlanceServer, image_id: str, accel: str,
                       rate: float | None) -> dict:
    local = work / "download.raw"
    fresh_start(glance, rate)
    start = time.monotonic()
    subprocess.run(["curl", "-sf", "-H", f"X-Auth-Token: {TOKEN}", "-o", str(local),
                    f"{glance.url}/v2/images/{image_id}/file"], check=True)
    top = guest.overlay(local, "raw", work / "download.qcow2")
    setup = time.monotonic() - start
    booted = guest.boot(top, work / "download-boot", accel=accel)
    result = {"seconds": setup + booted.seconds, "boot": booted.seconds,
              "glance": glance.stats()["data_bytes"], "read": booted.read_bytes(local)}
    local.unlink()
    return result


def boot_on_imagefs(work: Path, glance: GlanceServer, image_id: str, accel: str,
                    rate: float | None) -> dict:
    cache = work / f"cache-{time.monotonic_ns()}"
    fresh_start(glance, rate)
    start = time.monotonic()
    m = Mount(work, glance, cache, TOKEN, "256M")
    try:
        data = m.data(image_id)
        top = guest.overlay(data, "raw", work / "imagefs.qcow2")
        setup = time.monotonic() - start
        booted = guest.boot(top, work / "imagefs-boot", accel=accel)
    finally:
        m.close()
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    return {"seconds": setup + booted.seconds, "boot": booted.seconds,
            "glance": glance.stats()["data_bytes"], "read": booted.read_bytes(data)}


def one_pair(work: Path, glance: GlanceServer, image_id: str, accel: str,
             rate: float | None) -> dict:
    cases = {name: case(work, glance, image_id, accel, rate)
             for name, case in (("download", download_then_boot), ("imagefs", boot_on_imagefs))}
    glance.reset()
    cases["ratio"] = cases["imagefs"]["seconds"] / cases["download"]["seconds"]
    return cases


def median(pairs: list[dict], case: str, key: str) -> float:
    return statistics.median(p[case][key] for p in pairs)


def print_table(link: str, pairs: list[dict], size: int) -> None:
    print(f"\n{link} ({len(pairs)} pair{'s' if len(pairs) > 1 else ''}; image {size} bytes)")
    print(f"  {'case':<44} {'time s':>7} {'boot s':>7} {'Glance sent':>14} {'qemu read':>13}")
    for case, what in (("download", "(a) curl the image, boot a local overlay"),
                       ("imagefs", "(b) boot an overlay on a fresh imagefs mount")):
        print(f"  {what:<44} {median(pairs, case, 'seconds'):7.1f} "
              f"{median(pairs, case, 'boot'):7.1f} {median(pairs, case, 'glance'):14,.0f} "
              f"{median(pairs, case, 'read'):13,.0f}")
    ratios = [p["ratio"] for p in pairs]
    print(f"  time (b)/(a): {statistics.median(ratios):.2f}"
          + (f" (range {min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=125, help="the link, MB/s (default 125)")
    p.add_argument("--reps", type=int, default=1, help="pairs of cases per link (default 1)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("boot-bench: needs root (the build, the page cache, the mount)", file=sys.stderr)
        return 2
    raw = build_guest()
    accel = guest.accelerator(raw, "raw")
    print(f"boot-bench: guest {raw}, accelerator {accel}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="imagefs-boot-bench.") as tmp:
        work = Path(tmp)
        with GlanceServer(work / "glance") as glance:
            with open(raw, "rb") as f:
                image_id = API(GlanceDriver(glance.url)).create(
                    ALICE, {"name": "boot-bench", "disk_format": "raw",
                            "container_format": "bare"}, data=f)["id"]
            links = {f"link {args.rate:g} MB/s": args.rate * MB, "no limit": None}
            results = {link: [] for link in links}
            for _ in range(args.reps):
                for link, rate in links.items():
                    results[link].append(one_pair(work, glance, image_id, accel, rate))
    for link, pairs in results.items():
        print_table(link, pairs, raw.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
