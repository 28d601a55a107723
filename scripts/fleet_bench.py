"""Boot profiles shared through the image service only: a fleet with no shared
directory.

Builds (or reuses) the test guest, starts a real Glance on loopback with its
link limited to --rate (as scripts/boot_bench.py does) and uploads the guest's
raw disk twice (two image ids, so that one is profiled by a boot and the other
by ``imagefs profile record``).  Every mount has an empty cache and an empty
profile directory of its own: only Glance is shared.  Cases, each from a
dropped page cache to the (last) guest's marker:

  (a) download   curl the image, boot a local overlay ("boot" is the boot
                 from the local file alone)
  (b) host 1     first boot on a fresh mount; its unmount publishes the profile
  (c) host 2     alone, a fresh mount: it finds host 1's published profile
  (d) hosts 2-4  three fresh mounts at once, one guest each
  (e) record     ``imagefs profile record --publish`` of the second image on a
                 fresh mount (not timed as a boot)
  (f) first boot of the recorded image on a fresh host

Then the cost of looking profiles up: ``ls -l`` of a mount listing --many
images (and of each image's directory), the lookups the mount's log shows,
and the time of the first open of a ``data`` with no published profile, with
and without publishing.  Needs root.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import guest
from benchlib import ALICE, Mount
from boot_bench import (
    ANYWHERE,
    MB,
    TOKEN,
    boot_on_imagefs,
    build_guest,
    download_then_boot,
    fresh_start,
)
from glance_server import GlanceServer

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver

LOOKED = "looked for a published boot profile"


def fresh_dir(work: Path, name: str) -> Path:
    path = work / f"{name}-{time.monotonic_ns()}"
    path.mkdir()
    return path


def record(work: Path, glance: GlanceServer, image_id: str, rate: float) -> tuple[float, str]:
    fresh_start(glance, rate)
    m = Mount(work, glance, ANYWHERE, fresh_dir(work, "cache"), TOKEN, "256M")
    try:
        start = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "imagefs", "profile", "record", str(m.path),
                              image_id, "--publish", "--window", "300"],
                             capture_output=True, text=True, check=True)
        return time.monotonic() - start, out.stdout.strip()
    finally:
        m.close()


def lookup_cost(work: Path, glance: GlanceServer, many: int) -> dict:
    api = API(GlanceDriver(glance.url), page_size=500)
    ids = [api.create(ALICE, {"name": f"many-{i}", "disk_format": "raw",
                              "container_format": "bare"}, data=b"x" * 512)["id"]
           for i in range(many)]
    figures = {}
    for label, extra in (("publishing on", ()), ("publishing off", ("--no-publish-profiles",))):
        log = work / "mount.log"
        before = log.read_text().count(LOOKED) if log.exists() else 0
        m = Mount(work, glance, ANYWHERE, fresh_dir(work, "cache"), TOKEN, "256M", *extra)
        try:
            start = time.monotonic()
            subprocess.run(["ls", "-l", str(m.path)], check=True, capture_output=True)
            for image_id in ids:
                subprocess.run(["ls", "-l", str(m.path / image_id)], check=True,
                               capture_output=True)
            listing = time.monotonic() - start
            looked_listing = log.read_text().count(LOOKED) - before
            start = time.monotonic()
            with open(m.data(ids[0]), "rb") as f:
                f.read(512)
            first_open = time.monotonic() - start
            start = time.monotonic()
            with open(m.data(ids[0]), "rb") as f:
                f.read(512)
            second_open = time.monotonic() - start
        finally:
            m.close()
        figures[label] = {"listing_s": listing, "lookups_listing": looked_listing,
                          "lookups": log.read_text().count(LOOKED) - before,
                          "first_open_ms": first_open * 1000,
                          "second_open_ms": second_open * 1000}
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=125, help="the link, MB/s (default 125)")
    p.add_argument("--many", type=int, default=1000, help="images for the listing (1000)")
    args = p.parse_args()
    raw = build_guest()
    accel = guest.accelerator(raw, "raw")
    rate = args.rate * MB
    print(f"fleet-bench: guest {raw}, accelerator {accel}, link {args.rate:g} MB/s",
          file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="imagefs-fleet-bench.") as tmp:
        work = Path(tmp)
        with GlanceServer(work / "glance") as glance:
            api = API(GlanceDriver(glance.url))
            ids = []
            for name in ("booted", "recorded"):
                with open(raw, "rb") as f:
                    ids.append(api.create(ALICE, {"name": name, "disk_format": "raw",
                                                  "container_format": "bare"},
                                          data=f)["id"])
            local = download_then_boot(work, glance, ids[0], accel, rate)
            rows.append(("(a) download, then boot a local overlay", local))

            def host(image_id: str, hosts: int = 1) -> dict:
                return boot_on_imagefs(work, glance, image_id, accel, rate,
                                       fresh_dir(work, "profiles"), hosts=hosts)
            rows.append(("(b) host 1: fresh mount, nothing published", host(ids[0])))
            rows.append(("(c) host 2 alone: fresh, host 1's published", host(ids[0])))
            rows.append(("(d) hosts 2-4 at once: fresh, published", host(ids[0], 3)))
            took, said = record(work, glance, ids[1], rate)
            print(f"(e) profile record: {took:.1f} s: {said}")
            rows.append(("(f) recorded image, first boot, fresh host", host(ids[1])))
            print(f"\n{'case':<46} {'time s':>7} {'boot s':>7} {'Glance sent':>14} "
                  f"{'after marker':>13} {'/ local boot':>12}")
            for what, r in rows:
                print(f"{what:<46} {r['seconds']:7.1f} {r['boot']:7.1f} {r['glance']:14,} "
                      f"{r['after']:13,} {r['seconds'] / local['boot']:12.2f}")
            print(f"\nlookups, {args.many} images:")
            for label, f in lookup_cost(work, glance, args.many).items():
                print(f"  {label}: ls -l of the mount and of each image's directory "
                      f"{f['listing_s']:.1f} s with {f['lookups_listing']} profile lookups; "
                      f"first open of a data {f['first_open_ms']:.0f} ms, the next "
                      f"{f['second_open_ms']:.0f} ms; {f['lookups']} lookups in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
