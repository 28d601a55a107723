"""Cold whole-image reads of several versions of imagefs, side by side in one run.

Each variant is a source tree of imagefs (a checkout, e.g. a `git worktree` of
an older commit) and mount options.  Each round reads the same 1 GiB image
once with curl and once through a fresh mount and an empty cache of each
variant (`dd bs=1M`), in that order, with the server side in the same state
before each read and the same pinning as `scripts/bench` (Glance on CPU 1,
the client side on CPU 0; `--no-pin` for neither).  Printed per variant: the
seconds of each round, the ratio of the medians against curl's, and the
medians of the daemon's, Glance's and dd's CPU seconds, the data requests
Glance answered and the bytes it sent.

    git worktree add /tmp/before 5b8342a
    .venv/bin/python scripts/cold_ab.py --rounds 3 \\
        /tmp/before . "/tmp/before --cache-size 0" ". --cache-size 0"

Needs root (the page cache, the mount).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts"), str(ROOT)]

from benchlib import (Mount, Placement, cold_client, curl_cmd, dd_cmd,  # noqa: E402
                      new_cache, pinning_unavailable, prepare, store_file, timed_cpu,
                      upload_random_raw)
from glance_server import GlanceServer  # noqa: E402

from imagefs.api import API  # noqa: E402
from imagefs.config import parse_size  # noqa: E402
from imagefs.drivers.glance import GlanceDriver  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", metavar="'TREE [MOUNT OPTION...]'",
                   help="an imagefs source tree, then mount options, as one argument")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", default="1G")
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("cold_ab: needs root (the page cache, the mount)", file=sys.stderr)
        return 2
    variants = []
    for text in args.variants:
        tree, *options = shlex.split(text)
        if not (Path(tree) / "imagefs" / "__init__.py").is_file():
            print(f"cold_ab: {tree} is not an imagefs source tree", file=sys.stderr)
            return 2
        variants.append((text, str(Path(tree).resolve()), options))
    pinned = args.pin and pinning_unavailable() is None
    place = Placement(pinned)
    size = parse_size(args.size)
    results: dict[str, list[tuple]] = {"curl": []}
    with tempfile.TemporaryDirectory(prefix="cold-ab.", dir="/var/tmp") as tmp:
        work = Path(tmp)
        os.chdir(work)  # so that the daemons' `python -m imagefs` finds PYTHONPATH's
        with GlanceServer(work / "glance") as glance:
            image_id = upload_random_raw(API(GlanceDriver(glance.url)), work / "src", size,
                                         "cold-ab")
            store = store_file(glance, image_id)
            place.place_glance(glance)
            for _ in range(args.rounds):
                cold_client(place, store)
                glance.reset()
                seconds, cpu, (glance_cpu,) = timed_cpu(
                    place.client(curl_cmd(glance, image_id, "alice-token")), glance.proc.pid)
                results["curl"].append((seconds, cpu, glance_cpu, 0.0, 1, size))
                for text, tree, options in variants:
                    os.environ["PYTHONPATH"] = tree  # the daemon's imagefs
                    cache = new_cache(work)
                    m = Mount(work, glance, place, cache, "alice-token", "256M", *options)
                    try:
                        prepare(m, glance, place, image_id, store)
                        seconds, cpu, (glance_cpu, daemon_cpu) = timed_cpu(
                            place.client(dd_cmd(m.data(image_id))), glance.proc.pid,
                            m.proc.pid)
                        stats = glance.stats()
                    finally:
                        m.close()
                        del os.environ["PYTHONPATH"]
                    shutil.rmtree(cache, ignore_errors=True)
                    results.setdefault(text, []).append(
                        (seconds, cpu, glance_cpu, daemon_cpu, stats["data_requests"],
                         stats["data_bytes"]))
    print(f"{'pinned' if pinned else 'unpinned'}, {args.rounds} rounds, {size >> 20} MiB")
    curl = statistics.median(r[0] for r in results["curl"])
    for name, rows in results.items():
        med = [statistics.median(r[i] for r in rows) for i in range(6)]
        print(f"{name}\n  s {' '.join(f'{r[0]:.2f}' for r in rows)}  "
              f"{curl / med[0]:.2f}x curl  CPU s: daemon {med[3]:.2f} Glance {med[2]:.2f} "
              f"{'curl' if name == 'curl' else 'dd'} {med[1]:.2f}  "
              f"requests {med[4]:.0f}  sent {med[5] / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
