"""A cold sequential read from RBD through the mount, against ``rbd export``.

Starts a throw-away Ceph cluster and a Glance storing on it (the tests'
``ceph_cluster.py`` and ``glance_server.py``), uploads an image of random
bytes, and measures in alternating pairs, in the same run:

  rbd export   ``rbd export`` of the image's snapshot to stdout (/dev/null), with the
               host's read-only key (what librbd can do on this machine)
  mount        ``dd bs=1M`` of ``MOUNT/<id>/data`` on a fresh mount with an
               empty cache, the data read from RBD with the same key; and the
               same with no disk tier (``--cache-size 0``)

and prints the ratio of their speeds (median, min-max), with the bytes Glance
sent (0 expected) and the OSD read, counted by the servers.  Needs root.

    .venv/bin/python scripts/bench_rbd.py [--size 256M] [--pairs 3]
"""

from __future__ import annotations

import argparse
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

from benchlib import MiB, Mount, Placement, drop_page_cache, upload_random_raw  # noqa: E402
from ceph_cluster import CephCluster  # noqa: E402
from glance_server import GlanceServer  # noqa: E402

from imagefs.api import API  # noqa: E402
from imagefs.config import parse_size  # noqa: E402
from imagefs.drivers.glance import GlanceDriver  # noqa: E402


#: The mount and the commands run wherever the kernel puts them (not pinned).
ANYWHERE = Placement(pinned=False)


def osd_read(ceph: CephCluster) -> int:
    return ceph.perf_dump_osd()["osd"]["op_r_out_bytes"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M", help="image size (default 256M)")
    parser.add_argument("--pairs", type=int, default=3, help="alternating pairs (default 3)")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="bench-rbd-"))
    ceph = CephCluster(memstore_bytes=max(2 << 30, 3 * size))
    ceph.start()
    glance = GlanceServer(work / "glance", rbd=ceph)
    try:
        glance.start()
        api = API(GlanceDriver(glance.url, timeout=120))
        image_id = upload_random_raw(api, work / "image.raw", size, "bench-rbd")
        key = ("--id", "imagefs", "--keyring", str(ceph.keyring("imagefs")),
               "-c", str(ceph.conf_path))
        direct = ("--ceph-conf", str(ceph.conf_path), "--ceph-user", "imagefs",
                  "--ceph-keyring", str(ceph.keyring("imagefs")))
        export, mounted, no_disk, sent, osd = [], [], [], [], []
        for pair in range(args.pairs):
            drop_page_cache()
            start = time.perf_counter()
            subprocess.run(["rbd", *key, "export", f"images/{image_id}@snap", "-"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            export.append(time.perf_counter() - start)

            for times, extra in ((mounted, ()), (no_disk, ("--cache-size", "0"))):
                m = Mount(work, glance, ANYWHERE, work / f"cache-{pair}-{len(extra)}",
                          "alice-token", "256M", *direct, *extra)
                try:
                    drop_page_cache()
                    glance.reset()
                    before = osd_read(ceph)
                    start = time.perf_counter()
                    subprocess.run(["dd", f"if={m.data(image_id)}", "of=/dev/null",
                                    "bs=1M"], check=True, capture_output=True)
                    times.append(time.perf_counter() - start)
                    sent.append(glance.stats()["data_bytes"])
                    osd.append(osd_read(ceph) - before)
                finally:
                    m.close()
        ratios = [e / m for e, m in zip(export, mounted)]
        mib = size / MiB
        print(f"cold sequential read of {mib:.0f} MiB from RBD, {args.pairs} alternating pairs")
        print(f"  rbd export  {statistics.median(mib / t for t in export):7.0f} MiB/s "
              f"({', '.join(f'{t:.2f}' for t in export)} s)")
        print(f"  mount (dd)  {statistics.median(mib / t for t in mounted):7.0f} MiB/s "
              f"({', '.join(f'{t:.2f}' for t in mounted)} s)")
        print(f"  ratio       {statistics.median(ratios):.2f}x rbd export "
              f"({min(ratios):.2f}-{max(ratios):.2f})")
        bare = [e / m for e, m in zip(export, no_disk)]
        print(f"  no disk tier {statistics.median(mib / t for t in no_disk):6.0f} MiB/s "
              f"(--cache-size 0): {statistics.median(bare):.2f}x rbd export "
              f"({min(bare):.2f}-{max(bare):.2f})")
        print(f"  Glance sent {max(sent)} data bytes; the OSD read "
              f"{statistics.median(osd) / MiB:.1f} MiB per mount read")
    finally:
        glance.stop()
        ceph.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
