"""imagefs against its baselines, measured side by side in one run.

Starts a real Glance on loopback (tests/glance_server.py, whose wrapper
counts the bytes Glance sends), uploads a raw image of random bytes and a
sparse 20 GiB qcow2, and measures, each run against its baseline in the same
run:

  cold sequential   fresh mount, empty cache, dd bs=1M
                    vs curl of the same image from the same Glance
  warm sequential   the same file again on the same mount
                    vs a local copy already in the page cache
                    (median of 5 alternating pairs in each run)
  disk-cache read   remount on the same cache dir, once imagefs prefetch has
                    fetched what the cold read left out of the disk tier
                    (reported: the share of the image it fetched)
                    vs a cold read of a local copy
                    (median of 3 alternating pairs in each run)
  qemu-img info     cold, on the sparse qcow2: bytes fetched, seconds
  4 readers         cold, same image at once: bytes sent / size, time vs 1
  ls -l             the root with N images, cold and warm: API calls, time
  memory            peak RSS of the daemon during the cold read vs its memory cache

It also reports the CPU seconds per GiB of the daemon, dd and Glance during
the cold read, and of curl and Glance during the baseline (Glance shares the
machine's two cores with the reader), and the same cold read with no disk
tier (--cache-size 0): what filling the cache costs (the cold read with it is
to be at least 0.9x as fast).

Before each cold read (the cold reads through imagefs, with and without the
disk tier, curl's, the 4 readers', the disk-cache read and its local
baseline) the server side is put in the same state: the page cache is
dropped, and then Glance's own store file of the image (in the fs store's
filesystem_store_datadir, named by the image id) is read once with `cat`,
on Glance's CPU when pinned.  Only the client side is cold: Glance reads
from the page cache, not from the disk the disk tier writes to.  qemu-img
info does not drop the page cache.

Two tables, by default in one run (--pin or --no-pin for one of them): the
unpinned one, every process free to use both cores, and the pinned one, with
Glance on CPU 1 and the client side on CPU 0.  Pinned, every thread of
Glance's process (and of any process it started) is moved with
`taskset -a -p -c 1 PID`, and curl, dd, qemu-img, ls and the mount daemon
are started as `taskset -c 0 CMD` (their threads inherit it); unpinned, Glance
is moved back to all the bench's CPUs.  The two tables' runs alternate, which
one first changing each time, so that drift falls on both.  On a machine with
fewer than two CPUs pinning is skipped, with a note.

Prints a table of medians (min-max) for each and writes the same as JSON
(`unpinned`, `pinned`).  Needs root (to drop the page cache and to mount).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (ALICE, BOB, CLIENT_CPU, SERVER_CPU, GiB, MiB, Mount,  # noqa: E402
                      Placement, cold_client, curl_cmd, dd, dd_cmd, new_cache,
                      pinning_unavailable, prepare, store_file, timed, timed_cpu,
                      upload_random_raw)
from glance_server import GlanceServer  # noqa: E402

from imagefs.api import API  # noqa: E402
from imagefs.config import parse_size  # noqa: E402
from imagefs.drivers.glance import GlanceDriver  # noqa: E402

WARM_PAIRS = 5
DISK_PAIRS = 3


def make_sparse_qcow2(path: Path) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "20G"], check=True)
    cmds = []
    for i in range(64):  # 64 MiB of data scattered over 20 GiB
        cmds += ["-c", f"write -q -P {i % 250 + 1} {((i * 317) % 20000) << 20} 1M"]
    subprocess.run(["qemu-io", "-f", "qcow2", *cmds, str(path)], check=True)


def setup(work: Path, glance: GlanceServer, size: int, listing: int) -> dict:
    api = API(GlanceDriver(glance.url))
    src = work / "source.raw"
    print(f"bench: writing {size / MiB:.0f} MiB of random bytes", file=sys.stderr)
    raw = upload_random_raw(api, src, size, "bench-raw")
    sparse = work / "sparse.qcow2"
    make_sparse_qcow2(sparse)
    with open(sparse, "rb") as f:
        qcow2 = api.create(ALICE, {"name": "bench-qcow2", "disk_format": "qcow2",
                                   "container_format": "bare"}, data=f)["id"]
    print(f"bench: creating {listing} images for the listing", file=sys.stderr)

    def tiny(i):
        return api.create(BOB, {"name": f"list-{i:05d}", "disk_format": "raw",
                                "container_format": "bare"}, data=b"x")["id"]
    for i in range(listing):  # one at a time: Glance's sqlite database locks otherwise
        tiny(i)
    return {"src": src, "raw": raw, "raw_store": store_file(glance, raw), "qcow2": qcow2,
            "sparse": sparse, "size": size}


def one_run(work: Path, glance: GlanceServer, images: dict, memory: str,
            place: Placement) -> dict:
    raw, src, store = images["raw"], images["src"], images["raw_store"]
    r: dict[str, float] = {}
    token = "alice-token"
    place.place_glance(glance)
    client = place.client

    # cold sequential: curl baseline, then a fresh mount
    cold_client(place, store)
    r["curl_s"], r["curl_cpu"], (r["curl_glance_cpu"],) = timed_cpu(
        client(curl_cmd(glance, raw, token)), glance.proc.pid)
    cache = new_cache(work)
    m = Mount(work, glance, place, cache, token, memory)
    prepare(m, glance, place, raw, store)
    r["cold_s"], r["cold_dd_cpu"], (r["cold_glance_cpu"], r["cold_daemon_cpu"]) = timed_cpu(
        client(dd_cmd(m.data(raw))), glance.proc.pid, m.proc.pid)
    r["cold_server_bytes"] = glance.stats()["data_bytes"]
    r["peak_rss"] = m.peak_rss()

    # warm sequential: the same file again; baseline a page-cached local file.
    # One read takes ~0.2 s, so a single pair is mostly noise: take the median
    # of WARM_PAIRS, alternating.
    dd(place, src)
    warm, local = [], []
    for _ in range(WARM_PAIRS):
        warm.append(dd(place, m.data(raw)))
        local.append(dd(place, src))
    r["warm_s"], r["local_warm_s"] = statistics.median(warm), statistics.median(local)
    # What the cold read left out of the disk tier (its writers take only the CPU
    # the reader leaves), fetched now with imagefs prefetch: the disk-cache read
    # below is of the whole image from the disk tier.
    glance.reset()
    subprocess.run(client([sys.executable, "-m", "imagefs", "prefetch", str(m.path), raw,
                           "--cache-dir", str(cache)]),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r["cold_uncached_bytes"] = glance.stats()["data_bytes"]
    m.close()

    # the cold read again with no disk tier: what filling it costs (not a target)
    nodisk = new_cache(work)
    m = Mount(work, glance, place, nodisk, token, memory, "--cache-size", "0")
    prepare(m, glance, place, raw, store)
    r["cold_nodisk_s"] = dd(place, m.data(raw))
    m.close()
    shutil.rmtree(nodisk, ignore_errors=True)

    # disk-cache read: remount on the same cache dir; baseline a local file, both
    # after cold_client (the server sends nothing here, but the page cache then
    # holds the same for both).  The disk's speed here drifts by 2x within
    # minutes, so take the median of DISK_PAIRS, alternating, a fresh mount each.
    disk, local, sent = [], [], 0
    for _ in range(DISK_PAIRS):
        m = Mount(work, glance, place, cache, token, memory)
        prepare(m, glance, place, raw, store)
        disk.append(dd(place, m.data(raw)))
        sent += glance.stats()["data_bytes"]
        m.close()
        cold_client(place, store)
        local.append(dd(place, src))
    r["disk_s"], r["local_cold_s"] = statistics.median(disk), statistics.median(local)
    r["disk_server_bytes"] = sent
    shutil.rmtree(cache)

    # qemu-img info, cold
    cache = new_cache(work)
    m = Mount(work, glance, place, cache, token, memory)
    prepare(m, glance, place, images["qcow2"], None)
    r["qemu_img_info_s"] = timed(client(["qemu-img", "info", str(m.data(images["qcow2"]))]))
    r["qemu_img_info_bytes"] = glance.stats()["data_bytes"]
    m.close()
    shutil.rmtree(cache)

    # 4 readers at once, cold
    cache = new_cache(work)
    m = Mount(work, glance, place, cache, token, memory)
    prepare(m, glance, place, raw, store)
    start = time.perf_counter()
    procs = [subprocess.Popen(client(dd_cmd(m.data(raw))),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(4)]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError("a reader failed")
    r["four_s"] = time.perf_counter() - start
    r["four_server_bytes"] = glance.stats()["data_bytes"]
    m.close()
    shutil.rmtree(cache)

    # ls -l of the root with the listing images (bob's project)
    cache = new_cache(work)
    m = Mount(work, glance, place, cache, "bob-token", memory)
    glance.reset()
    r["ls_cold_s"] = timed(client(["ls", "-l", str(m.path)]))
    stats = glance.stats()
    r["ls_cold_calls"] = stats["list_requests"] + stats["get_requests"]
    glance.reset()
    r["ls_warm_s"] = timed(client(["ls", "-l", str(m.path)]))
    stats = glance.stats()
    r["ls_warm_calls"] = stats["list_requests"] + stats["get_requests"]
    m.close()
    shutil.rmtree(cache)
    return r


def summarize(runs: list[dict], images: dict, memory: int, listing: int, page_size: int) -> dict:
    size = images["size"]

    def stat(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    def ratio(num, den):  # per run, then summarized: noise cancels within a run
        return stat([r[den] / r[num] for r in runs])

    pages = -(-listing // page_size) + 1  # the last page tells there is no next one
    out = {
        "cold_vs_curl": ratio("cold_s", "curl_s"),
        "cold_MiBps": stat([size / MiB / r["cold_s"] for r in runs]),
        "cold_nodisk_vs_curl": ratio("cold_nodisk_s", "curl_s"),
        "cold_vs_nodisk": ratio("cold_s", "cold_nodisk_s"),
        # CPU seconds per GiB: where a cold read's CPU goes, Glance's included
        **{f"{k}_per_GiB": stat([r[k] * GiB / size for r in runs])
           for k in ("curl_cpu", "curl_glance_cpu", "cold_dd_cpu", "cold_glance_cpu",
                     "cold_daemon_cpu")},
        "curl_MiBps": stat([size / MiB / r["curl_s"] for r in runs]),
        "warm_vs_local_warm": ratio("warm_s", "local_warm_s"),
        "warm_MiBps": stat([size / MiB / r["warm_s"] for r in runs]),
        "disk_vs_local_cold": ratio("disk_s", "local_cold_s"),
        "disk_MiBps": stat([size / MiB / r["disk_s"] for r in runs]),
        "disk_server_bytes": stat([r["disk_server_bytes"] for r in runs]),
        "cold_uncached_share": stat([r["cold_uncached_bytes"] / size for r in runs]),
        "qemu_img_info_bytes": stat([r["qemu_img_info_bytes"] for r in runs]),
        "qemu_img_info_s": stat([r["qemu_img_info_s"] for r in runs]),
        "four_readers_sent_vs_size": stat([r["four_server_bytes"] / size for r in runs]),
        "four_readers_time_vs_one": stat([r["four_s"] / r["cold_s"] for r in runs]),
        "ls_cold_calls": stat([r["ls_cold_calls"] for r in runs]),
        "ls_cold_s": stat([r["ls_cold_s"] for r in runs]),
        "ls_warm_s": stat([r["ls_warm_s"] for r in runs]),
        "ls_warm_calls": stat([r["ls_warm_calls"] for r in runs]),
        "listing_pages": pages,
        "peak_rss_MiB": stat([r["peak_rss"] / MiB for r in runs]),
        "memory_cache_MiB": memory / MiB,
    }
    out["targets"] = {
        "cold >= 0.8x curl": out["cold_vs_curl"]["median"] >= 0.8,
        "cold with disk tier >= 0.9x --cache-size 0": out["cold_vs_nodisk"]["median"] >= 0.9,
        "warm >= 0.5x page-cached local": out["warm_vs_local_warm"]["median"] >= 0.5,
        "disk-cache >= 0.7x cold local": out["disk_vs_local_cold"]["median"] >= 0.7,
        "qemu-img info <= 1 MiB": out["qemu_img_info_bytes"]["median"] <= MiB,
        "qemu-img info <= 0.2 s": out["qemu_img_info_s"]["median"] <= 0.2,
        "4 readers sent <= 1.05x": out["four_readers_sent_vs_size"]["median"] <= 1.05,
        "ls -l warm <= 50 ms": out["ls_warm_s"]["median"] <= 0.05,
        "ls -l cold calls <= pages": out["ls_cold_calls"]["median"] <= pages,
        "peak RSS <= cache + 100 MiB": out["peak_rss_MiB"]["median"] <= memory / MiB + 100,
    }
    return out


def print_table(s: dict) -> None:
    def f(d, fmt="{:.2f}"):
        return f"{fmt.format(d['median'])} ({fmt.format(d['min'])}-{fmt.format(d['max'])})"
    rows = [
        ("cold sequential", f(s["cold_vs_curl"]) + " x curl",
         f"{f(s['cold_MiBps'], '{:.0f}')} MiB/s vs curl {f(s['curl_MiBps'], '{:.0f}')}"),
        ("cold CPU-s/GiB", f(s["cold_daemon_cpu_per_GiB"]) + " daemon",
         f"dd {f(s['cold_dd_cpu_per_GiB'])}, Glance {f(s['cold_glance_cpu_per_GiB'])}; "
         f"curl run: curl {f(s['curl_cpu_per_GiB'])}, Glance {f(s['curl_glance_cpu_per_GiB'])}"),
        ("  no disk tier", f(s["cold_nodisk_vs_curl"]) + " x curl",
         (f"the same cold read with --cache-size 0; with the disk tier "
          f"{f(s['cold_vs_nodisk'])} x this")),
        ("warm sequential", f(s["warm_vs_local_warm"]) + " x local",
         f"{f(s['warm_MiBps'], '{:.0f}')} MiB/s"),
        ("  left uncached", f(s["cold_uncached_share"]) + " of the image",
         "by the cold read's disk tier; fetched by imagefs prefetch before the next row"),
        ("disk-cache read", f(s["disk_vs_local_cold"]) + " x local",
         f"{f(s['disk_MiBps'], '{:.0f}')} MiB/s; server sent {f(s['disk_server_bytes'], '{:.0f}')} B"),
        ("qemu-img info", f(s["qemu_img_info_bytes"], "{:.0f}") + " B",
         f"{f(s['qemu_img_info_s'], '{:.3f}')} s"),
        ("4 readers at once", f(s["four_readers_sent_vs_size"]) + " x size sent",
         f"time {f(s['four_readers_time_vs_one'])} x one reader"),
        ("ls -l cold", f(s["ls_cold_calls"], "{:.0f}") + " API calls",
         f"{f(s['ls_cold_s'], '{:.3f}')} s; {s['listing_pages']} pages"),
        ("ls -l warm", f(s["ls_warm_calls"], "{:.0f}") + " API calls", f"{f(s['ls_warm_s'], '{:.3f}')} s"),
        ("memory", f(s["peak_rss_MiB"], "{:.0f}") + " MiB peak RSS",
         f"memory cache {s['memory_cache_MiB']:.0f} MiB"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'figure'.ljust(w0)}  {'imagefs vs baseline: median (min-max)'.ljust(w1)}  detail")
    for a, b, c in rows:
        print(f"{a.ljust(w0)}  {b.ljust(w1)}  {c}")
    print()
    for name, ok in s["targets"].items():
        print(f"  [{'ok' if ok else 'MISS'}] {name}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1G", help="raw image size (default 1G)")
    p.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    p.add_argument("--listing", type=int, default=1000, help="images for ls -l (default 1000)")
    p.add_argument("--memory-cache", default="256M", help="the mount's memory cache (default 256M)")
    p.add_argument("--out", default="bench-results.json", help="JSON output file")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None,
                   help=f"--pin: only the table with Glance on CPU {SERVER_CPU} and the client "
                        f"side on CPU {CLIENT_CPU}; --no-pin: only the table without; "
                        "default: both, their runs alternating")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (to drop the page cache and mount)", file=sys.stderr)
        return 2
    for tool in ("curl", "dd", "cat", "qemu-img", "qemu-io", "fusermount3"):
        if not shutil.which(tool):
            print(f"bench: {tool} is missing (run scripts/setup)", file=sys.stderr)
            return 2
    pinned = [False, True] if args.pin is None else [args.pin]
    note = pinning_unavailable() if True in pinned else None
    if note:
        print(f"bench: pinning skipped: {note}", file=sys.stderr)
        pinned = [False]
    places = [Placement(p) for p in pinned]
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="imagefs-bench-"))
    glance = GlanceServer(work / "glance")
    try:
        glance.start()
        images = setup(work, glance, size, args.listing)
        runs: dict[str, list[dict]] = {place.name: [] for place in places}
        for i in range(args.reps):
            # alternate which table goes first, so that drift over the run
            # falls on both alike
            for place in places[::-1] if i % 2 else places:
                print(f"bench: run {i + 1} of {args.reps}, {place.name}", file=sys.stderr)
                runs[place.name].append(one_run(work, glance, images, args.memory_cache, place))
        out: dict = {"size": size, "pinning_skipped": note}
        for place in places:
            summary = summarize(runs[place.name], images, parse_size(args.memory_cache),
                                args.listing, 100)
            summary["runs"] = runs[place.name]
            out[place.name] = summary
            where = (f"Glance on CPU {SERVER_CPU}, the client side on CPU {CLIENT_CPU}"
                     if place.pinned else
                     f"every process on CPUs {','.join(map(str, place.anywhere))}")
            print(f"{place.name}: {where}")
            print_table(summary)
            print()
        if note:
            print(f"(pinning skipped: {note})")
        Path(args.out).write_text(json.dumps(out, indent=2))
        print(f"(written to {args.out})")
    finally:
        glance.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
