"""A mount outlives its serving daemon: kill -9 with a read in flight, restart, the
abort after repeated failures to start, and a clean stop (real mounts, real Glance)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
import urllib.request

import pytest
from survive_util import (MiB, daemon_of, image, imagefs, in_thread, kill9,  # noqa: F401
                          log_of, mounted, restart, status)

pytestmark = [pytest.mark.mount, pytest.mark.glance]


def test_kill_9_with_a_read_in_flight_answers_it_with_the_right_bytes(
        mounted, image, glance_clean):
    m = mounted()
    fd = os.open(m.image(image["id"]) / "data", os.O_RDONLY)
    try:
        glance_clean.faults(delay=60)  # the read waits in the daemon, on Glance
        thread, result = in_thread(lambda: os.pread(fd, 4096, 37 * MiB))
        time.sleep(1.0)
        assert "took" not in result
        first = kill9(m)
        glance_clean.faults()
        thread.join(20)
        assert not thread.is_alive(), "the read in flight was never answered"
        assert "error" not in result, result
        assert result["value"] == image["bytes"][37 * MiB:37 * MiB + 4096]
        assert daemon_of(m) != first
        got = os.pread(fd, 1 << 20, 3 * MiB)  # the same descriptor goes on
        assert got == image["bytes"][3 * MiB:4 * MiB]
        print(f"\nthe read in flight at the kill took {result['took']:.2f} s in all")
    finally:
        os.close(fd)


def test_restart_hands_over_keeps_the_cache_and_counts_takeovers(mounted, image, glance_clean):
    from glance_server import free_port

    port = free_port()
    m = mounted("--metrics", f"127.0.0.1:{port}")
    path = m.image(image["id"]) / "data"
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        want = image["bytes"][:8 * MiB]
        assert os.pread(fd, 8 * MiB, 0) == want
        before = status(m)
        assert before["takeovers"] == 0 and before["pid"] == daemon_of(m)
        done = restart(m)
        assert done.returncode == 0, done.stderr
        after = status(m)
        assert after["pid"] != before["pid"] and after["takeovers"] == 1
        assert after["version"] and after["started"] >= before["started"]
        assert f"served by daemon {after['pid']}" in done.stdout
        deadline = time.monotonic() + 20  # the old daemon exits once it answered
        while os.path.exists(f"/proc/{before['pid']}"):
            assert time.monotonic() < deadline, "the old daemon did not exit"
            time.sleep(0.05)
        requests = glance_clean.stats()["data_requests"]
        assert os.pread(fd, 8 * MiB, 0) == want  # from the disk cache the old one filled
        assert glance_clean.stats()["data_requests"] == requests
        assert os.path.ismount(m.path)
        deadline = time.monotonic() + 20  # the new daemon's metrics, once the port is free
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, log_of(m)
                time.sleep(0.2)
        assert b"imagefs_cache_hits_total" in page.read()
    finally:
        os.close(fd)
    assert "handed over" in log_of(m) and "Traceback" not in log_of(m)


def test_repeated_failures_to_start_abort_the_connection(mounted, image, glance_clean, tmp_path):
    m = mounted()
    fd = os.open(m.image(image["id"]) / "data", os.O_RDONLY | os.O_DIRECT)
    try:
        glance_clean.faults(delay=120)
        thread, result = in_thread(lambda: os.pread(fd, 4096, 0))
        time.sleep(0.5)
        # No daemon can start now: its cache directory is a file.
        m.cache_dir.rename(tmp_path / "moved")
        m.cache_dir.write_text("not a directory")
        kill9(m)
        thread.join(60)
        assert not thread.is_alive(), "the reader hangs"
        assert isinstance(result.get("error"), OSError), result
        assert result["error"].errno in (errno.ECONNABORTED, errno.ENOTCONN, errno.EIO)
        assert m.proc.wait(30) == 1
        lines = [ln for ln in log_of(m).splitlines() if "aborting the FUSE connection" in ln]
        assert len(lines) == 1 and "failed to start 5 times in a row" in lines[0], log_of(m)
    finally:
        os.close(fd)


def test_umount_stops_the_holder(glance_clean, tmp_path):
    env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url}
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    assert imagefs("mount", str(mnt), "--cache-dir", str(cache), env=env).returncode == 0
    try:
        _umount_stops_the_holder(mnt, cache)
    finally:
        subprocess.run(["fusermount3", "-u", "-q", "-z", str(mnt)])


def _umount_stops_the_holder(mnt, cache):
    holder = int((cache / "lock").read_text())
    daemon = [int(p) for p in subprocess.run(["pgrep", "-P", str(holder)], capture_output=True,
                                             text=True).stdout.split()]
    assert len(daemon) == 1
    os.kill(daemon[0], signal.SIGKILL)  # a crash first: the mount goes on
    time.sleep(0.2)
    assert "by-name" in os.listdir(mnt)
    done = imagefs("umount", str(mnt))
    assert done.returncode == 0, done.stderr
    assert not os.path.ismount(mnt)
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{holder}") and \
            "zombie" not in open(f"/proc/{holder}/status").read():
        assert time.monotonic() < deadline, "the holder did not exit after umount"
        time.sleep(0.1)
    log = (cache / "imagefs.log").read_text()
    assert "was unmounted" in log and "Traceback" not in log


def test_as_a_systemd_unit_reload_hands_over_and_stop_unmounts(glance_clean, tmp_path):
    """What the unit does: the main process (the holder) gets SIGHUP for ``systemctl
    reload`` and SIGTERM for ``systemctl stop`` (``KillMode=mixed``)."""
    from test_mount import NotifySocket, alice_mounts

    notify = NotifySocket(tmp_path)
    try:
        m = alice_mounts(glance_clean, tmp_path, [], {"NOTIFY_SOCKET": notify.address})()
        wait_for, messages = notify.wait_for, notify.messages
        try:
            wait_for("READY=1")
            first = daemon_of(m)
            m.proc.send_signal(signal.SIGHUP)  # systemctl reload
            wait_for("READY=1", 2)
            assert status(m)["takeovers"] == 1 and daemon_of(m, other_than=first) != first
            assert "STOPPING=1" not in "".join(messages)  # a hand-over is no stop
            m.proc.send_signal(signal.SIGTERM)  # systemctl stop
            assert m.proc.wait(30) == 0, log_of(m)
            wait_for("STOPPING=1")
            assert not os.path.ismount(m.path)
        finally:
            subprocess.run(["fusermount3", "-u", "-q", "-z", str(m.path)])
    finally:
        notify.close()
