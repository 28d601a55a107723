"""Nova spawning an instance: its own download, or a lazy boot through imagefs.

Builds (or reuses) the test guest with scripts/build-guest, starts a real
Glance on loopback and uploads the guest's raw disk.  Then, on a link limited
to --rate (the Glance wrapper's ``rate``, as in scripts/boot_bench.py), it
measures in the same run, for each qemu cache mode (``none``: O_DIRECT, as
Nova's libvirt driver boots where the instance path supports it; and qemu's
default, buffered):

  (a) Nova's own path   Nova's ``cache()`` with its own fetch_func
                        (``libvirt_utils.fetch_image``: the whole image through
                        the image API into ``_base``, deep inspection, qemu-img
                        info), then ``create_image`` (the qcow2 overlay), then
                        the guest's boot from that disk
  (b) imagefs           a fresh mount (empty cache, no boot profile) with
                        ``--nova-base-dir`` on Nova's ``_base``; Nova's
                        ``cache()`` finds the link and makes the overlay on it;
                        the guest's boot

Nova's code is unchanged (tests/nova_host.py sets it up; its image API is
imagefs's ``API``, which has Nova's methods).  Each case starts with the page
cache dropped and Glance's counters zeroed; its time runs from the ``cache()``
call to the guest's marker (the mount, a host service, is up before).
Printed per case: that time, the boot's part of it, the bytes Glance sent, of
which for ``cache()``, and the bytes qemu read from the base file.  With
--reps N, the medians of N rounds.

Boot times under TCG on a shared machine vary by more than the reads cost, so a
second table replays the reads qemu made of the base file in the imagefs
``cache=none`` boot (from its trace, in order, by one reader, at the same
rate), on fresh mounts: buffered (the kernel's readahead), O_DIRECT (the
mount's readahead for O_DIRECT readers), and O_DIRECT with ``--readahead 0``
(neither): the time, the bytes Glance sent, and the seconds the reads
waited in the mount (``imagefs status``'s ``reads.seconds``).  Needs root.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import subprocess
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import guest  # noqa: E402
from bench import ALICE, Mount  # noqa: E402
from boot_bench import ANYWHERE, MB, TOKEN, build_guest, fresh_start  # noqa: E402
from glance_server import GlanceServer  # noqa: E402
from nova_host import NovaHost, base_name  # noqa: E402

from imagefs.api import API  # noqa: E402
from imagefs.drivers.glance import GlanceDriver  # noqa: E402

GiB = 1 << 30
FLAVOR_ROOT = 4 * GiB
MODES = (("none", "cache=none"), (None, "buffered"))


def reads_of(trace: Path, path: Path) -> list[tuple[int, int]]:
    """(offset, size) of each read qemu made of ``path``'s file node, in order."""
    nodes, reads = {}, []
    for line in trace.read_text().splitlines():
        if m := re.search(r'bdrv_open_common bs (0x[0-9a-f]+) filename "(.*)" flags \S+ '
                          r'format_name "([^"]*)"', line):
            nodes[m[1]] = (m[2], m[3])
        elif (m := re.search(r"bdrv_co_preadv_part bs (0x[0-9a-f]+) offset (\d+) bytes (\d+)",
                             line)) and nodes.get(m[1]) == (str(path), "file"):
            reads.append((int(m[2]), int(m[3])))
    return reads


def replay(work: Path, glance: GlanceServer, image_id: str, rate: float | None,
           reads: list[tuple[int, int]], direct: bool, extra: list[str]) -> dict:
    """``reads`` of a fresh mount's ``data``, in order, O_DIRECT or buffered."""
    cache_dir = work / f"cache-{time.monotonic_ns()}"
    m = Mount(work, glance, ANYWHERE, cache_dir, TOKEN, "256M", "--profile-window", "0",
              *extra)
    try:
        data = m.data(image_id)
        os.stat(data)
        fresh_start(glance, rate)
        buf = mmap.mmap(-1, max(n for _, n in reads))  # aligned, as O_DIRECT needs
        start = time.monotonic()
        fd = os.open(data, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        try:
            for offset, n in reads:
                os.preadv(fd, [memoryview(buf)[:n]], offset)
        finally:
            os.close(fd)
        seconds = time.monotonic() - start
        status = subprocess.run([sys.executable, "-m", "imagefs", "status", str(m.path),
                                 "--cache-dir", str(cache_dir), "-f", "json"],
                                capture_output=True, text=True, check=True)
        waited = json.loads(status.stdout)["reads"].get("seconds", float("nan"))
    finally:
        m.close()
    shutil.rmtree(cache_dir)
    return {"seconds": seconds, "glance": glance.stats()["data_bytes"], "waited": waited}


REPLAYS = (("buffered (kernel readahead)", False, []),
           ("O_DIRECT (mount readahead)", True, []),
           ("O_DIRECT, --readahead 0", True, ["--readahead", "0"]))


def _wait(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.05)


def nova_own(work: Path, glance: GlanceServer, api: API, image_id: str, accel: str,
             rate: float | None, cache: str | None) -> dict:
    host = NovaHost(work / f"instances-{time.monotonic_ns()}")
    fresh_start(glance, rate)
    start = time.monotonic()
    disk = host.spawn_disk(host.instance(image_id), image_id, FLAVOR_ROOT,
                           NovaHost.nova_fetch(api, ALICE))
    cached, cache_sent = time.monotonic() - start, glance.stats()["data_bytes"]
    booted = guest.boot(disk, work / "nova-boot", accel=accel, cache=cache)
    result = {"seconds": cached + booted.seconds, "boot": booted.seconds,
              "glance": glance.stats()["data_bytes"], "cache": cache_sent,
              "read": booted.read_bytes(host.base_dir / base_name(image_id))}
    shutil.rmtree(host.instances_path)
    return result


def on_imagefs(work: Path, glance: GlanceServer, image_id: str, accel: str,
               rate: float | None, cache: str | None, extra: list[str]) -> dict:
    host = NovaHost(work / f"instances-{time.monotonic_ns()}")
    cache_dir = work / f"cache-{time.monotonic_ns()}"
    m = Mount(work, glance, ANYWHERE, cache_dir, TOKEN, "256M",
              "--nova-base-dir", str(host.base_dir), "--profile-window", "0", *extra)
    try:
        link = host.base_dir / base_name(image_id)
        _wait(link)
        fresh_start(glance, rate)
        start = time.monotonic()
        disk = host.spawn_disk(host.instance(image_id), image_id, FLAVOR_ROOT,
                               lambda **kw: sys.exit("imagefs case: Nova downloaded"))
        cached, cache_sent = time.monotonic() - start, glance.stats()["data_bytes"]
        booted = guest.boot(disk, work / "imagefs-boot", accel=accel, cache=cache)
    finally:
        m.close()
    result = {"seconds": cached + booted.seconds, "boot": booted.seconds,
              "glance": glance.stats()["data_bytes"], "cache": cache_sent,
              "read": booted.read_bytes(link),
              "reads": reads_of(work / "imagefs-boot" / "trace.txt", link)}
    shutil.rmtree(host.instances_path)
    shutil.rmtree(cache_dir)
    return result


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=125,
                   help="the link, MB/s (default 125 = 1 Gbit/s; 0: no limit)")
    p.add_argument("--reps", type=int, default=1, help="rounds of the cases (default 1)")
    p.add_argument("--mount-option", action="append", default=[], metavar="OPT",
                   help="an option for the imagefs mounts (repeatable, e.g. --readahead=0)")
    return p.parse_args()


def main() -> int:
    args = arguments()
    if os.geteuid() != 0:
        sys.exit("nova-bench: needs root (the build, the page cache, the mounts)")
    raw = build_guest()
    rate = args.rate * MB if args.rate else None
    accel = guest.accelerator(raw, "raw")
    print(f"nova-bench: guest {raw}, accelerator {accel}", file=sys.stderr)
    rows: dict[str, list[dict]] = {}
    replays: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="imagefs-nova-bench.") as tmp:
        work = Path(tmp)
        with GlanceServer(work / "glance") as glance:
            api = API(GlanceDriver(glance.url))
            with open(raw, "rb") as f:
                image_id = api.create(ALICE, {"name": "nova-bench", "disk_format": "raw",
                                              "container_format": "bare"}, data=f)["id"]
            for _ in range(args.reps):
                for cache, mode in MODES:
                    rows.setdefault(f"(a) Nova's own path, {mode}", []).append(
                        nova_own(work, glance, api, image_id, accel, rate, cache))
                    rows.setdefault(f"(b) imagefs, {mode}", []).append(
                        on_imagefs(work, glance, image_id, accel, rate, cache,
                                   args.mount_option))
                    print(f"nova-bench: {mode} done", file=sys.stderr)
                reads = rows["(b) imagefs, cache=none"][-1]["reads"]
                for what, direct, extra in REPLAYS:
                    replays.setdefault(what, []).append(
                        replay(work, glance, image_id, rate, reads, direct, extra))
    link = f"link {args.rate:g} MB/s" if args.rate else "no limit"
    print(f"\n{link}, {args.reps} rep(s), image {raw.stat().st_size:,} bytes, {accel}; "
          f"from Nova's cache() call to the guest's marker (medians)")
    print(f"  {'case':<32} {'time s':>7} {'boot s':>7} {'Glance sent':>14} "
          f"{'for cache()':>12} {'qemu read':>13} {'sent/read':>9}")
    for what, reps in rows.items():
        med = {k: statistics.median(r[k] for r in reps) for k in reps[0] if k != "reads"}
        print(f"  {what:<32} {med['seconds']:7.1f} {med['boot']:7.1f} {med['glance']:14,.0f} "
              f"{med['cache']:12,.0f} {med['read']:13,.0f} "
              f"{med['glance'] / max(med['read'], 1):9.2f}")
    for _, mode in MODES:
        own, lazy = rows[f"(a) Nova's own path, {mode}"], rows[f"(b) imagefs, {mode}"]
        ratios = [b["seconds"] / a["seconds"] for a, b in zip(own, lazy)]
        print(f"  {mode}: time (b)/(a) {statistics.median(ratios):.2f}")
    reads = rows["(b) imagefs, cache=none"][-1]["reads"]
    print(f"\nqemu's {len(reads)} reads of the base file ({sum(n for _, n in reads):,} bytes, "
          f"the imagefs cache=none boot's) replayed in order on fresh mounts (medians)")
    print(f"  {'reader':<32} {'time s':>7} {'waited s':>9} {'Glance sent':>14}")
    for what, reps in replays.items():
        med = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
        print(f"  {what:<32} {med['seconds']:7.2f} {med['waited']:9.2f} {med['glance']:14,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
