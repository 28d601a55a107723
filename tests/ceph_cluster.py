"""A throw-away single-node Ceph cluster on loopback, for tests.

``CephCluster(state_dir)`` bootstraps and runs one ``ceph-mon`` and one
``ceph-osd`` as children of the calling process, as the calling user (root)
and without systemd, with every file under ``state_dir``: configuration,
keyrings, the monitor's store, the OSD's directory, admin sockets, pid files
and logs.  ``stop()`` ends both daemons and removes ``state_dir``.

What a started cluster offers:

- the pool ``images``, initialised for RBD (``rbd pool init``), 8 PGs, one
  replica;
- cephx keys, each in a 0600 keyring file named in ``ceph.conf``:
  ``client.admin`` (everything), ``client.glance`` (read-write RBD on
  ``images``, as a Glance rbd store uses) and ``client.imagefs`` (read-only
  RBD on ``images``, as a host reading images directly would use);
- ``conf_path``: a ``ceph.conf`` any client on this machine can use with
  ``--id <user>`` (``rbd``, ``rados``, librados, glance_store);
- ``perf_dump_osd()``: the OSD's perf counters, to count the bytes it served.

The OSD's objectstore is memstore: data lives in the OSD's memory (about
twice the bytes stored) and is gone when the cluster stops.  There is no
ceph-mgr, and PG states and usage are what the mgr reports: ``ceph -s``
shows no pools and no PGs, and ``ceph health`` says HEALTH_OK without them.
So the cluster counts as ready when the OSD is up and in and an object can be
written to and removed from ``images``.

Pitfalls, each handled in this file:

- An admin socket path must fit ``sun_path`` (107 bytes): keep the state
  directory short (``/tmp/cephXXXXXXXX``, not a pytest tmp path).
- ``mon cluster log file``, ``log file``, ``run dir``, ``crash dir``, ``pid
  file`` and ``admin socket`` all default to /var/...: each is set here.
- Pool size 1 needs ``mon allow pool size one``; it also raises
  POOL_NO_REDUNDANCY unless ``mon warn on pool no redundancy`` is off.
- With one host, CRUSH must place replicas across OSDs, not hosts
  (``osd crush chooseleaf type = 0``), or a pool of size > 1 never goes clean.
- The monitor shuts itself down when its filesystem has less than ``mon data
  avail crit`` (5 %) free; a shared test machine may, so it is lowered.
- A daemon fetches its configuration from the monitors before anything
  else, with its own key: ``ceph-osd --mkfs --mkkey``, which makes that key,
  needs ``--no-mon-config``.
- Every change to a map (the OSD booting, a pool, a pool snapshot, each
  RBD snapshot Glance takes of an upload) waits for ``paxos propose
  interval`` (1 s): lowered, the cluster is ready in about 2 s, not 9.
- Only msgr2 is bound: one port for the monitor, and clients from this
  release speak it.
- The daemons run in the foreground (``-f``) as children: a daemonized one
  is re-parented to pid 1, which on a test VM may not reap it, and a zombie
  still answers ``kill(pid, 0)``.  As children they are waited for, and they
  die with the thread that started them (``PR_SET_PDEATHSIG``), so a killed
  test run leaves no daemon behind.
- memstore would write its whole content to the OSD directory on a clean
  unmount; SIGTERM skips that (``osd fast shutdown``, on by default), so the
  OSD stops in milliseconds whatever it holds.  Keep it on.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

#: The programs a cluster needs (Debian: ceph-mon, ceph-osd, ceph-common).
BINARIES = ("ceph-mon", "ceph-osd", "ceph", "ceph-authtool", "monmaptool", "rados", "rbd")

POOL = "images"

#: user -> (mon caps, osd caps) of the client keys a cluster creates.
CLIENTS = {
    "glance": ("profile rbd", f"profile rbd pool={POOL}"),
    "imagefs": ("profile rbd", f"profile rbd-read-only pool={POOL}"),
}

#: sun_path is 108 bytes with its terminating NUL.
_MAX_SOCKET_PATH = 107

CONF = """\
[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{port}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = {dir}/run
crash dir = {dir}/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 2
mon data avail crit = 1
paxos propose interval = 0.05
paxos min wait = 0.01

[mon]
mon data = {dir}/$name
mon cluster log file = {dir}/log/cluster.log
log file = {dir}/log/$name.log
pid file = {dir}/run/$name.pid
admin socket = {dir}/run/$name.asok

[osd]
osd data = {dir}/$name
keyring = {dir}/$name/keyring
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
log file = {dir}/log/$name.log
pid file = {dir}/run/$name.pid
admin socket = {dir}/run/$name.asok

[client.admin]
keyring = {dir}/client.admin.keyring
{client_sections}"""


class CephClusterError(RuntimeError):
    """The cluster could not be bootstrapped or did not become ready."""


def missing_binaries() -> list[str]:
    """The programs of ``BINARIES`` that are not on ``PATH``."""
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_prctl = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """In the child before exec: SIGTERM when the thread that forked it ends.
    (Looked up beforehand: a forked child of a threaded process should do
    as little as it can.)"""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class CephCluster:
    """One monitor (``mon.a``) and one memstore OSD (``osd.0``) on 127.0.0.1.

    ``state_dir`` must not exist or be empty, and be short enough for the
    admin sockets under it; ``None`` makes one with ``mkdtemp`` in /tmp.
    ``start()`` returns once the pool ``images`` takes writes and the client
    keys exist, or stops what it started and raises ``CephClusterError``
    with the daemons' log tails.  Call it from a thread that outlives the
    cluster (the daemons end with it).  ``stop()`` is safe to call at any
    point, more than once; it removes ``state_dir``.
    """

    def __init__(self, state_dir: str | os.PathLike | None = None, *,
                 memstore_bytes: int = 2 << 30):
        self.dir = Path(state_dir or tempfile.mkdtemp(prefix="ceph", dir="/tmp"))
        if len(os.fsencode(self.admin_socket("osd.0"))) > _MAX_SOCKET_PATH:
            raise ValueError(f"{self.dir}: too long for the admin sockets under it "
                             f"(at most {_MAX_SOCKET_PATH} bytes); use a short path in /tmp")
        if self.dir.exists() and any(self.dir.iterdir()):
            raise ValueError(f"{self.dir}: not empty (stop() would remove it)")
        self.memstore_bytes = memstore_bytes
        self.pool = POOL
        self.fsid = str(uuid.uuid4())
        self.port = _free_port()
        self.conf_path = self.dir / "ceph.conf"
        self.admin_keyring = self.dir / "client.admin.keyring"
        self.procs: dict[str, subprocess.Popen] = {}
        #: Seconds from ``start()`` to ready, once started.
        self.start_seconds: float | None = None

    def keyring(self, user: str) -> Path:
        """The keyring file of ``client.<user>`` (``admin`` or one of ``CLIENTS``)."""
        if user != "admin" and user not in CLIENTS:
            raise KeyError(user)
        return self.dir / f"client.{user}.keyring"

    def admin_socket(self, name: str) -> Path:
        """The admin socket of daemon ``name`` (``mon.a``, ``osd.0``)."""
        return self.dir / "run" / f"{name}.asok"

    def pid(self, name: str) -> int:
        """The pid of daemon ``name`` (``mon.a``, ``osd.0``) while it runs."""
        return self.procs[name].pid

    def rss_bytes(self, name: str) -> int:
        """Resident memory of daemon ``name``, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid(name)}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ProcessLookupError(name)

    # --- running commands ------------------------------------------------
    def _run(self, *argv: str, timeout: float = 60, check: bool = True,
             input: bytes | None = None) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired as exc:
            raise CephClusterError(f"{' '.join(argv)}: no answer in {timeout}s"
                                   + self._logs()) from exc
        if check and proc.returncode != 0:
            raise CephClusterError(f"{' '.join(argv)}: exit {proc.returncode}: "
                                   f"{proc.stderr.decode(errors='replace').strip()}"
                                   + self._logs())
        return proc

    def ceph(self, *args: str, timeout: float = 60) -> str:
        """``ceph <args>`` as client.admin; its standard output."""
        return self._run("ceph", "-c", str(self.conf_path), "--connect-timeout", "10",
                         *args, timeout=timeout).stdout.decode()

    def ceph_json(self, *args: str, timeout: float = 60):
        return json.loads(self.ceph(*args, "--format", "json", timeout=timeout))

    def perf_dump_osd(self) -> dict:
        """``ceph daemon osd.0 perf dump``, parsed: ``["osd"]["op_r_out_bytes"]``
        is the bytes of object data the OSD has sent to clients."""
        return json.loads(self._run("ceph", "-c", str(self.conf_path), "daemon",
                                    str(self.admin_socket("osd.0")), "perf", "dump",
                                    timeout=30).stdout)

    # --- lifecycle -------------------------------------------------------
    def _write_config(self):
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sub in ("run", "log", "crash"):
            (self.dir / sub).mkdir()
        sections = "".join(f"\n[client.{user}]\nkeyring = {self.keyring(user)}\n"
                           for user in CLIENTS)
        self.conf_path.write_text(CONF.format(fsid=self.fsid, port=self.port, dir=self.dir,
                                              memstore_bytes=self.memstore_bytes,
                                              client_sections=sections))

    def _spawn(self, name: str, *argv: str):
        kind, ident = name.split(".")
        out = open(self.dir / "log" / f"{name}.out", "wb")
        with out:
            self.procs[name] = subprocess.Popen(
                [f"ceph-{kind}", "-f", "-c", str(self.conf_path), "-i", ident, *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)

    def _check_alive(self):
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise CephClusterError(f"{name} exited with {proc.returncode}" + self._logs())

    def _bootstrap_mon(self):
        mon_keyring, monmap = self.dir / "mon.keyring", self.dir / "monmap"
        self._run("ceph-authtool", "--create-keyring", str(mon_keyring), "--gen-key",
                  "-n", "mon.", "--cap", "mon", "allow *")
        self._run("ceph-authtool", "--create-keyring", str(self.admin_keyring), "--gen-key",
                  "-n", "client.admin", "--cap", "mon", "allow *", "--cap", "osd", "allow *",
                  "--cap", "mds", "allow *", "--cap", "mgr", "allow *")
        self._run("ceph-authtool", str(mon_keyring), "--import-keyring", str(self.admin_keyring))
        self._run("monmaptool", "--create", "--fsid", self.fsid,
                  "--addv", "a", f"[v2:127.0.0.1:{self.port}]", str(monmap))
        self._run("ceph-mon", "-c", str(self.conf_path), "--mkfs", "-i", "a",
                  "--monmap", str(monmap), "--keyring", str(mon_keyring))
        self._spawn("mon.a")

    def _bootstrap_osd(self):
        osd_uuid = str(uuid.uuid4())
        osd_id = self.ceph("osd", "create", osd_uuid).strip()
        if osd_id != "0":
            raise CephClusterError(f"ceph osd create gave id {osd_id!r}, not 0")
        (self.dir / "osd.0").mkdir()
        self._run("ceph-osd", "-c", str(self.conf_path), "-i", "0", "--mkfs", "--mkkey",
                  "--osd-uuid", osd_uuid, "--no-mon-config")
        self.ceph("auth", "add", "osd.0", "osd", "allow *", "mon", "allow profile osd",
                  "mgr", "allow profile osd", "-i", str(self.dir / "osd.0" / "keyring"))
        self._spawn("osd.0")

    def _wait(self, what: str, ready, deadline: float):
        while True:
            self._check_alive()
            try:
                if ready():
                    return
            except CephClusterError:
                pass
            if time.monotonic() > deadline:
                raise CephClusterError(f"timed out waiting for {what}" + self._logs())
            time.sleep(0.3)

    def _osd_up_and_in(self) -> bool:
        stat = self.ceph_json("osd", "stat", timeout=20)
        stat = stat.get("osdmap", stat)  # older releases nest it
        return stat["num_up_osds"] == 1 and stat["num_in_osds"] == 1

    def _pool_takes_writes(self) -> bool:
        """A write and a remove in the pool: only an active PG answers them."""
        common = ("-c", str(self.conf_path), "--rados-osd-op-timeout", "5", "-p", POOL)
        self._run("rados", *common, "put", "ceph-cluster-probe", "-", input=b"probe",
                  timeout=20)
        self._run("rados", *common, "rm", "ceph-cluster-probe", timeout=20)
        return True

    def _create_users(self):
        for user, (mon_caps, osd_caps) in CLIENTS.items():
            path = self.keyring(user)
            self.ceph("auth", "get-or-create", f"client.{user}", "mon", mon_caps,
                      "osd", osd_caps, "-o", str(path))
            path.chmod(0o600)
        self.admin_keyring.chmod(0o600)

    def start(self, timeout: float = 120.0) -> "CephCluster":
        began = time.monotonic()
        deadline = began + timeout
        try:
            self._write_config()
            self._bootstrap_mon()
            self._wait("the monitor", lambda: self.ceph_json("mon", "stat", timeout=15)
                       .get("quorum") is not None, deadline)
            self._bootstrap_osd()
            self._wait("osd.0 up and in", self._osd_up_and_in, deadline)
            self.ceph("osd", "pool", "create", POOL)
            self._wait(f"pool {POOL} to take writes", self._pool_takes_writes, deadline)
            self._run("rbd", "-c", str(self.conf_path), "pool", "init", POOL)
            self._create_users()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def health(self) -> str:
        """``ceph health``, one line.  It knows nothing of PGs (there is no mgr)."""
        return self.ceph("health").strip()

    def stop(self, timeout: float = 30.0):
        """SIGTERM the OSD, then the monitor, SIGKILL what is left at ``timeout``,
        reap them, and remove the state directory."""
        for name in ("osd.0", "mon.a"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _logs(self, tail: int = 3000) -> str:
        """The end of each daemon log, for an error message."""
        parts = []
        for path in sorted((self.dir / "log").glob("*")):
            text = path.read_text(errors="replace")[-tail:]
            parts.append(f"\n--- {path.name} ---\n{text}")
        return "".join(parts)
