"""The holder and the takeover, on a minimal pyfuse3 filesystem (``survive_fs.py``):
a daemon killed with a read in flight, a hand-over (SIGHUP), a crash loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import imagefs.holder
from survive_fs import pattern

HERE = Path(__file__).parent
ROOT = HERE.parent


def _daemon_pids(holder_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(holder_pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


class Mount:
    def __init__(self, tmp_path: Path, **spec):
        self.path = tmp_path / "mnt"
        self.path.mkdir()
        self.slow = tmp_path / "slow"
        self.fail = tmp_path / "fail"
        self.log = tmp_path / "holder.log"
        spec = {"mountpoint": str(self.path), "options": ["ro"],
                "daemon": [sys.executable, str(HERE / "survive_fs.py")], **spec}
        self.own = tmp_path / "own"
        (tmp_path / "slow.mnt").write_text(str(self.path / "file"))
        if spec.pop("read_own", False):
            self.own.touch()
            self.slow.write_text("2")
        env = dict(os.environ, PYTHONPATH=str(ROOT), SURVIVE_SLOW=str(self.slow),
                   SURVIVE_FAIL=str(self.fail), SURVIVE_READ_OWN=str(self.own),
                   **{imagefs.holder.SPEC_ENV: json.dumps(spec)})
        self.proc = subprocess.Popen([sys.executable, "-I", imagefs.holder.__file__], env=env,
                                     stderr=open(self.log, "ab"))
        deadline = time.monotonic() + 20
        while not (self.path / "file").exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def daemon(self) -> int:
        deadline = time.monotonic() + 10
        while True:
            pids = _daemon_pids(self.proc.pid)
            if len(pids) == 1:
                return pids[0]
            assert time.monotonic() < deadline, pids
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        subprocess.run(["fusermount3", "-u", "-q", "-z", str(self.path)])


@pytest.fixture
def mount(tmp_path):
    made = []

    def make(**spec):
        made.append(Mount(tmp_path, **spec))
        return made[-1]
    yield make
    for m in made:
        m.stop()


def _read_in_thread(fd: int, offset: int, size: int):
    result = {}

    def run():
        t0 = time.monotonic()
        try:
            result["data"] = os.pread(fd, size, offset)
        except OSError as exc:
            result["error"] = exc
        result["took"] = time.monotonic() - t0
    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_read_in_flight_when_the_daemon_is_killed_completes_with_the_right_bytes(mount):
    m = mount()
    fd = os.open(m.path / "file", os.O_RDONLY | os.O_DIRECT)
    try:
        m.slow.write_text("3")
        first = m.daemon()
        thread, result = _read_in_thread(fd, 8 << 20, 1 << 16)
        time.sleep(0.5)
        assert "took" not in result  # the read waits in the daemon
        m.slow.unlink()
        os.kill(first, signal.SIGKILL)
        thread.join(10)
        assert not thread.is_alive(), "the read in flight was never answered"
        assert "error" not in result, result
        assert result["data"] == pattern(8 << 20, 1 << 16)
        assert m.daemon() != first
        assert os.pread(fd, 4096, 0) == pattern(0, 4096)  # the same descriptor goes on
    finally:
        os.close(fd)


def test_a_hand_over_answers_the_old_daemons_reads_and_serves_from_the_new(mount):
    m = mount()
    fd = os.open(m.path / "file", os.O_RDONLY | os.O_DIRECT)
    try:
        m.slow.write_text("2")
        first = m.daemon()
        thread, result = _read_in_thread(fd, 1 << 20, 4096)
        time.sleep(0.3)
        os.kill(m.proc.pid, signal.SIGHUP)
        thread.join(10)
        assert result.get("data") == pattern(1 << 20, 4096), result
        m.slow.unlink()
        deadline = time.monotonic() + 10
        while first in _daemon_pids(m.proc.pid):  # the old one exits once it answered
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert os.pread(fd, 4096, 4096) == pattern(4096, 4096)
        assert "handed over and exited (status 0)" in m.log.read_text()
    finally:
        os.close(fd)


def test_a_daemon_that_cannot_start_gets_the_connection_aborted(mount):
    m = mount(max_failures=3, backoff_cap=0.2)
    fd = os.open(m.path / "file", os.O_RDONLY | os.O_DIRECT)
    try:
        m.slow.write_text("30")
        thread, result = _read_in_thread(fd, 0, 4096)
        time.sleep(0.3)
        m.fail.touch()
        os.kill(m.daemon(), signal.SIGKILL)
        thread.join(15)
        assert not thread.is_alive(), "the reader hangs"
        assert isinstance(result.get("error"), OSError)
        assert m.proc.wait(10) == 1
        lines = [ln for ln in m.log.read_text().splitlines() if "aborting" in ln]
        assert len(lines) == 1 and "failed to start 3 times in a row" in lines[0]
    finally:
        os.close(fd)


def test_an_old_daemon_killed_after_a_hand_over_has_its_reads_resent(mount):
    m = mount()
    fd = os.open(m.path / "file", os.O_RDONLY | os.O_DIRECT)
    try:
        m.slow.write_text("5")
        first = m.daemon()
        thread, result = _read_in_thread(fd, 2 << 20, 4096)
        time.sleep(0.3)
        os.kill(m.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "took over" not in m.log.read_text() and \
                "handing over" not in m.log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        m.slow.unlink()
        os.kill(first, signal.SIGKILL)  # with the read still unanswered
        thread.join(10)
        assert result.get("data") == pattern(2 << 20, 4096), result
        assert "the kernel resends what the dead daemon had read" in m.log.read_text()
    finally:
        os.close(fd)


def test_a_daemon_killed_while_its_own_thread_waits_on_the_mount_is_replaced(mount):
    """Its main thread dies; the thread waiting for an answer it had read itself cannot
    (the kernel waits for that answer), so the process never exits on its own."""
    m = mount(read_own=True)
    first = m.daemon()
    time.sleep(1.0)  # its thread's read is in the daemon, waiting
    os.kill(first, signal.SIGKILL)
    m.slow.unlink()
    deadline = time.monotonic() + 10
    while [p for p in _daemon_pids(m.proc.pid) if p != first] == []:
        assert time.monotonic() < deadline, m.log.read_text()
        time.sleep(0.05)
    with open(m.path / "file", "rb") as f:
        assert f.read(4096) == pattern(0, 4096)
    while first in _daemon_pids(m.proc.pid):  # answered by the next daemon: it is reaped
        assert time.monotonic() < deadline, m.log.read_text()
        time.sleep(0.05)
    assert "a thread left waiting on the mount" in m.log.read_text()
