"""What the benchmarks share: a mount, where processes run, uploads, cold starts.

``Mount`` starts ``imagefs mount --foreground`` against a test Glance and
waits for it; ``Placement`` pins the client side and Glance to one CPU each
(or not); ``upload_file`` and ``upload_random_raw`` make Alice's raw images;
``drop_page_cache`` and ``cold_client`` put the machine in the same state
before each cold read.  Used by bench.py, bench_rbd.py, boot_bench.py and
cold_ab.py (and importable from scripts/ by any other).
"""

from __future__ import annotations

import configparser
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from glance_server import GlanceServer  # noqa: E402

from imagefs.api import API  # noqa: E402
from imagefs.context import RequestContext  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
ALICE = RequestContext(auth_token="alice-token")
BOB = RequestContext(auth_token="bob-token")
CLIENT_CPU, SERVER_CPU = 0, 1


class Placement:
    """Which CPUs each side runs on: Glance on SERVER_CPU and the client side
    (curl, dd, qemu-img, ls, the mount daemon) on CLIENT_CPU when ``pinned``,
    anywhere the bench itself may run otherwise."""

    def __init__(self, pinned: bool):
        self.pinned = pinned
        self.name = "pinned" if pinned else "unpinned"
        self.anywhere = sorted(os.sched_getaffinity(0))

    def client(self, cmd: list[str]) -> list[str]:
        return ["taskset", "-c", str(CLIENT_CPU), *cmd] if self.pinned else list(cmd)

    def server(self, cmd: list[str]) -> list[str]:
        return ["taskset", "-c", str(SERVER_CPU), *cmd] if self.pinned else list(cmd)

    def place_glance(self, glance: GlanceServer) -> None:
        """Every thread of Glance's process and of any process it started (threads
        started later inherit their creator's CPUs)."""
        cpus = [SERVER_CPU] if self.pinned else self.anywhere
        for pid in process_tree(glance.proc.pid):
            subprocess.run(["taskset", "-a", "-p", "-c", ",".join(map(str, cpus)), str(pid)],
                           check=True, stdout=subprocess.DEVNULL)
        wrong = {t: c for t, c in thread_cpus(glance.proc.pid).items() if c != set(cpus)}
        if wrong:
            raise RuntimeError(f"Glance threads not on CPUs {cpus}: {wrong}")


def pinning_unavailable() -> str | None:
    """Why pinning cannot be done here, or None."""
    if (os.cpu_count() or 1) < 2:
        return f"this machine has {os.cpu_count()} CPU"
    if not {CLIENT_CPU, SERVER_CPU} <= os.sched_getaffinity(0):
        return f"CPUs {CLIENT_CPU} and {SERVER_CPU} are not both available to the bench"
    if not shutil.which("taskset"):
        return "taskset is missing"
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def thread_cpus(pid: int) -> dict[str, set[int]]:
    """The CPUs each thread of ``pid`` and its descendants may run on, by "pid/tid"."""
    out = {}
    for p in process_tree(pid):
        for task in Path(f"/proc/{p}/task").iterdir():
            try:
                out[f"{p}/{task.name}"] = os.sched_getaffinity(int(task.name))
            except ProcessLookupError:
                pass  # a thread that ended meanwhile
    return out


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def store_file(glance: GlanceServer, image_id: str) -> Path:
    """Glance's own copy of the image: the file named by its id in the fs store."""
    conf = configparser.ConfigParser(strict=False, interpolation=None)
    conf.read(glance.dir / "glance-api.conf")
    backend = conf["glance_store"]["default_backend"]
    path = Path(conf[backend]["filesystem_store_datadir"]) / image_id
    if not path.is_file():
        raise RuntimeError(f"Glance's store file of {image_id} is not at {path}")
    return path


def cold_client(place: Placement, store: Path) -> None:
    """The same server-side state before each cold read: drop the page cache,
    then read Glance's store file once (on Glance's CPU when pinned), so that
    only the client side is cold and Glance serves from the page cache."""
    drop_page_cache()
    subprocess.run(place.server(["cat", str(store)]), check=True, stdout=subprocess.DEVNULL)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_cpu(cmd: list[str], *pids: int) -> tuple[float, float, list[float]]:
    """Seconds, the command's CPU seconds, and those of ``pids`` meanwhile."""
    before, child = [cpu_seconds(p) for p in pids], children_cpu()
    seconds = timed(cmd)
    return seconds, children_cpu() - child, [cpu_seconds(p) - b for p, b in zip(pids, before)]


def curl_cmd(glance: GlanceServer, image_id: str, token: str) -> list[str]:
    """The baseline: the whole image from Glance in one GET, to /dev/null."""
    return ["curl", "-sf", "-H", f"X-Auth-Token: {token}",
            f"{glance.url}/v2/images/{image_id}/file", "-o", "/dev/null"]


def dd_cmd(path: Path) -> list[str]:
    return ["dd", f"if={path}", "of=/dev/null", "bs=1M"]


def dd(place: Placement, path: Path) -> float:
    return timed(place.client(dd_cmd(path)))


class Mount:
    def __init__(self, work: Path, glance: GlanceServer, place: Placement, cache: Path,
                 token: str, memory: str, *extra: str):
        self.path = work / f"mnt-{time.monotonic_ns()}"
        self.path.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(OS_AUTH_TOKEN=token, OS_IMAGE_URL=glance.url)
        # taskset execs the daemon: self.proc.pid is the daemon's, and its threads
        # inherit its CPUs
        self.proc = subprocess.Popen(
            place.client([sys.executable, "-m", "imagefs", "mount", str(self.path), "--foreground",
                          "--cache-dir", str(cache), "--memory-cache", memory, "-v", *extra]),
            env=env, stderr=open(work / "mount.log", "a"))
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mount failed; see {work / 'mount.log'}")
            time.sleep(0.02)

    def data(self, image_id: str) -> Path:
        return self.path / image_id / "data"

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def close(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.path)], check=True)
        if self.proc.wait(60) != 0:
            raise RuntimeError("the mount exited with an error")
        self.path.rmdir()


def prepare(m: Mount, glance: GlanceServer, place: Placement, image_id: str,
            store: Path | None) -> None:
    """Look the file up; with ``store`` (Glance's store file of the image) drop
    the page cache and read that file back (``cold_client``); zero the
    server's counters."""
    os.stat(m.data(image_id))
    if store is not None:
        cold_client(place, store)
    glance.reset()


def new_cache(work: Path) -> Path:
    return work / f"cache-{time.monotonic_ns()}"


def upload_file(api: API, path: Path, name: str) -> str:
    """Upload the file at ``path`` as Alice's raw image ``name``; its id."""
    with open(path, "rb") as f:
        return api.create(ALICE, {"name": name, "disk_format": "raw",
                                  "container_format": "bare"}, data=f)["id"]


def upload_random_raw(api: API, path: Path, size: int, name: str) -> str:
    """Write ``size`` random bytes to ``path`` and upload them as Alice's raw image
    ``name``; its id."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
    return upload_file(api, path, name)
