"""Helpers for the tests of mounts that outlive their daemon (tests/test_survive_*.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import ALICE, make_image, random_bytes
from test_mount import Mount, alice_mounts, imagefs

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver

MiB = 1 << 20
ENV_NO_TAKEOVER = "IMAGEFS_NO_TAKEOVER"  # the holder replaces no daemon (to check tests fail)


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def daemon_of(m: Mount, other_than: int | None = None, timeout: float = 20.0) -> int:
    """The pid of the daemon serving ``m`` (the holder's one child)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in children(m.proc.pid) if p != other_than]
        if len(pids) == 1:
            return pids[0]
        assert time.monotonic() < deadline, f"daemons of {m.proc.pid}: {pids}"
        time.sleep(0.02)


def kill9(m: Mount) -> int:
    pid = daemon_of(m)
    os.kill(pid, signal.SIGKILL)
    return pid


def log_of(m: Mount) -> str:
    """The mount's output so far, read through a descriptor of its own (``Mount.output``
    moves the offset its running processes write at)."""
    return Path(m.log.name).read_text(errors="replace")


def restart(m: Mount) -> subprocess.CompletedProcess:
    return imagefs("restart", str(m.path), "--timeout", "20")


def status(m: Mount) -> dict:
    import json
    proc = imagefs("status", str(m.path), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def in_thread(fn):
    """Run ``fn()`` in a thread; (thread, result) with ``value`` or ``error``, ``took``."""
    result = {}

    def run():
        t0 = time.monotonic()
        try:
            result["value"] = fn()
        except OSError as exc:
            result["error"] = exc
        result["took"] = time.monotonic() - t0
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


@pytest.fixture(scope="module")
def image(glance, tmp_path_factory):
    """A 64 MiB raw image of random bytes, alice's."""
    data = random_bytes(64 * MiB + 4321)
    api = API(GlanceDriver(glance.url))
    image_id = make_image(api, ALICE, "survive", data=data)["id"]
    return {"id": image_id, "bytes": data}


@pytest.fixture
def mounted(glance_clean, tmp_path):
    """mounted(*extra) -> a Mount as alice, through the holder; unmounted at teardown."""
    mounts = []
    yield alice_mounts(glance_clean, tmp_path, mounts)
    glance_clean.faults()
    for m in mounts:
        if m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
            try:
                m.proc.wait(30)
            except subprocess.TimeoutExpired:
                m.proc.kill()
        subprocess.run(["fusermount3", "-u", "-q", "-z", str(m.path)])
