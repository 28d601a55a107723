"""Booting VMs from Glance: download first, or boot lazily from imagefs.

Builds (or reuses) the test guest with scripts/build-guest, starts a real
Glance on loopback (tests/glance_server.py) and uploads the guest's raw
disk.  Then, on a link limited to --rate (the Glance wrapper's ``rate``,
shared by all data responses: one host's share of a real link) and again
with no limit, it measures in the same run:

  (a) download   curl the whole image from Glance to a local file, then boot
                 from a qcow2 overlay on that file
  (b) host 1     mount with an empty cache and an empty profile directory,
                 boot from a qcow2 overlay on MOUNT/<id>/data; at its unmount
                 the mount saves the image's boot profile there
  (c) host 2     a new mount with an empty cache of its own and host 1's
                 profile directory (as hosts sharing one over NFS): the
                 profile is replayed as the guest boots
  (d) hosts 3-5  three such mounts at once, each booting one guest

Each case starts with the page cache dropped and ends when the (last)
guest's marker appears on its console; its time includes the download, or
the mounts, and the overlays' creation.  Printed per case: that time, the
boot's part of it, the bytes Glance sent, of which after the marker, and the
bytes qemu read from the backing file (tests/guest.py counts them with
qemu's trace events); then the ratios the boot issue asks for.  With
--reps N, the medians of N rounds.  Needs root (the build, the page cache,
the mount).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
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
from benchlib import Mount, Placement, drop_page_cache, upload_file  # noqa: E402
from glance_server import GlanceServer  # noqa: E402

from imagefs.api import API  # noqa: E402
from imagefs.drivers.glance import GlanceDriver  # noqa: E402

MB = 1000 * 1000
#: The guests need both cores: nothing is pinned here.
ANYWHERE = Placement(pinned=False)
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
              "glance": glance.stats()["data_bytes"], "after": 0,
              "read": booted.read_bytes(local)}
    local.unlink()
    return result


def boot_on_imagefs(work: Path, glance: GlanceServer, image_id: str, accel: str,
                    rate: float | None, profiles: Path, hosts: int = 1) -> dict:
    """``hosts`` mounts, each with an empty cache of its own and ``profiles`` as
    their profile directory, each booting one guest, all at once."""
    caches = [work / f"cache-{time.monotonic_ns()}-{i}" for i in range(hosts)]
    fresh_start(glance, rate)
    at_marker = []
    start = time.monotonic()
    mounts = [Mount(work, glance, ANYWHERE, cache, TOKEN, "256M", "--profile-dir", str(profiles))
              for cache in caches]
    try:
        def one(i: int) -> tuple[float, guest.Boot, Path]:
            data = mounts[i].data(image_id)
            top = guest.overlay(data, "raw", work / f"imagefs-{i}.qcow2")
            setup = time.monotonic() - start
            booted = guest.boot(top, work / f"imagefs-boot-{i}", accel=accel,
                                on_marker=lambda: at_marker.append(glance.stats()["data_bytes"]))
            return setup + booted.seconds, booted, data  # to the marker, not the power-off
        with concurrent.futures.ThreadPoolExecutor(hosts) as pool:
            results = list(pool.map(one, range(hosts)))
    finally:
        for m in mounts:
            m.close()
    for cache in caches:
        subprocess.run(["rm", "-rf", str(cache)], check=True)
    sent = glance.stats()["data_bytes"]
    seconds, booted, data = max(results, key=lambda r: r[0])
    return {"seconds": seconds, "boot": booted.seconds, "glance": sent,
            "after": sent - max(at_marker), "read": booted.read_bytes(data)}


CASES = (("download", "(a) curl the image, boot a local overlay"),
         ("first", "(b) host 1: fresh mount, no profile yet"),
         ("second", "(c) host 2: fresh cache, host 1's profile"),
         ("three", "(d) hosts 3-5 at once: fresh caches, the profile"))


def one_rep(work: Path, glance: GlanceServer, image_id: str, accel: str,
            rate: float | None) -> dict:
    profiles = work / f"profiles-{time.monotonic_ns()}"
    cases = {"download": download_then_boot(work, glance, image_id, accel, rate),
             "first": boot_on_imagefs(work, glance, image_id, accel, rate, profiles),
             "second": boot_on_imagefs(work, glance, image_id, accel, rate, profiles),
             "three": boot_on_imagefs(work, glance, image_id, accel, rate, profiles, hosts=3)}
    subprocess.run(["rm", "-rf", str(profiles)], check=True)
    glance.reset()
    return cases


def median(reps: list[dict], case: str, key: str) -> float:
    return statistics.median(r[case][key] for r in reps)


def print_table(link: str, reps: list[dict], size: int) -> None:
    print(f"\n{link} ({len(reps)} rep{'s' if len(reps) > 1 else ''}; image {size:,} bytes; "
          "medians)")
    print(f"  {'case':<50} {'time s':>7} {'boot s':>7} {'Glance sent':>14} "
          f"{'after marker':>13} {'qemu read':>13}")
    for case, what in CASES:
        print(f"  {what:<50} {median(reps, case, 'seconds'):7.1f} "
              f"{median(reps, case, 'boot'):7.1f} {median(reps, case, 'glance'):14,.0f} "
              f"{median(reps, case, 'after'):13,.0f} {median(reps, case, 'read'):13,.0f}")

    def ratio(a: str, b: str, key: str = "seconds") -> str:
        values = [r[a][key] / r[b][key] for r in reps]
        return f"{statistics.median(values):.2f}" + (
            f" (range {min(values):.2f}-{max(values):.2f})" if len(values) > 1 else "")
    print(f"  time (b)/(a): {ratio('first', 'download')}   time (c)/(b): "
          f"{ratio('second', 'first')}   slowest of (d)/(b): {ratio('three', 'first')}")
    print(f"  Glance sent / qemu read, (b): "
          f"{median(reps, 'first', 'glance') / median(reps, 'first', 'read'):.2f}x"
          f"   Glance sent, (d) in all / (b): {ratio('three', 'first', 'glance')}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=125, help="the link, MB/s (default 125)")
    p.add_argument("--reps", type=int, default=1, help="rounds of the cases per link (default 1)")
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
            image_id = upload_file(API(GlanceDriver(glance.url)), raw, "boot-bench")
            links = {f"link {args.rate:g} MB/s": args.rate * MB, "no limit": None}
            results = {link: [] for link in links}
            try:
                for _ in range(args.reps):
                    for link, rate in links.items():
                        results[link].append(one_rep(work, glance, image_id, accel, rate))
            except guest.BootFailed:
                kept = Path(tempfile.mkdtemp(prefix="imagefs-boot-bench-failed."))
                for log in [work / "mount.log", *work.glob("*/console.txt"),
                            *work.glob("*/qemu.txt")]:
                    if log.exists():
                        shutil.copy(log, kept / f"{log.parent.name}-{log.name}")
                print(f"boot-bench: a boot failed; the mounts' log and the consoles are in "
                      f"{kept}", file=sys.stderr)
                raise
    for link, reps in results.items():
        print_table(link, reps, raw.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
