"""Real mounts through faults of the service around them: the credentials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ALICE, make_image, random_bytes
from test_mount import Mount, imagefs

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver

pytestmark = [pytest.mark.mount, pytest.mark.glance]
MiB = 1 << 20


def in_mountinfo(path: Path) -> bool:
    """Whether the kernel lists a mount at ``path``, live or dead (ismount says False on dead)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@pytest.fixture
def mounts():
    """Mount points to clear at teardown (dead or alive), and processes to end."""
    paths: list[Path] = []
    procs: list[subprocess.Popen] = []
    pids: list[int] = []
    yield paths, procs, pids
    for path in paths:
        if in_mountinfo(path):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    for pid in pids:
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def image(glance_clean, tag):
    """An image of alice's: (id, its bytes)."""
    data = random_bytes(3 * MiB + 17)
    record = make_image(API(GlanceDriver(glance_clean.url)), ALICE, tag, data=data)
    return record["id"], data


def daemon_pid(cache_dir: Path) -> int:
    return int((cache_dir / "lock").read_text())


# ---- a token file ------------------------------------------------------------------
def test_a_mount_with_a_token_file_lists_and_reads_images(glance_clean, tmp_path, image, mounts):
    paths, procs, _ = mounts
    token_file = tmp_path / "token"
    token_file.write_text("  alice-token\n")
    token_file.chmod(0o600)
    m = Mount(tmp_path / "mnt", tmp_path / "cache", {"OS_IMAGE_URL": glance_clean.url},
              "--os-auth-token-file", str(token_file))
    paths.append(m.path)
    procs.append(m.proc)
    image_id, data = image
    assert image_id in os.listdir(m.path)
    assert (m.image(image_id) / "data").read_bytes() == data
    assert not any("alice-token" in arg for arg in cmdline(m.proc.pid))
    assert m.unmount() == 0
    assert "WARNING" not in m.output(), m.output()


def rotate(glance, token_file: Path, old: str, new: str) -> int:
    """Replace ``old`` by ``new`` (same identity) in Glance and in the file; the 401 count."""
    glance.tokens(add={new: old})
    token_file.write_text(new + "\n")
    glance.tokens(revoke=[old])
    return glance.stats()["unauthorized"]


def test_a_rotated_token_file_is_read_again_when_glance_answers_401(glance_clean, tmp_path,
                                                                    image, mounts):
    paths, procs, _ = mounts
    token_file = tmp_path / "token"
    token_file.write_text("alice-token\n")
    token_file.chmod(0o600)
    m = Mount(tmp_path / "mnt", tmp_path / "cache", {"OS_IMAGE_URL": glance_clean.url},
              "--os-auth-token-file", str(token_file))
    paths.append(m.path)
    procs.append(m.proc)
    image_id, data = image
    assert image_id in os.listdir(m.path)
    fd = os.open(m.image(image_id) / "data", os.O_RDONLY)
    try:
        # A data GET (the session's own request) meets the revoked token first ...
        refused = rotate(glance_clean, token_file, "alice-token", "alice-2")
        assert os.pread(fd, 1000, 2 * MiB) == data[2 * MiB:2 * MiB + 1000]  # not cached
        assert glance_clean.stats()["unauthorized"] > refused
        # ... then a listing and a record (glanceclient's requests), past the TTLs (1 s).
        refused = rotate(glance_clean, token_file, "alice-2", "alice-3")
        time.sleep(1.2)
        assert image_id in os.listdir(m.path)
        assert json.loads((m.image(image_id) / "metadata.json").read_text())["id"] == image_id
        assert glance_clean.stats()["unauthorized"] > refused
        assert os.pread(fd, 1000, 0) == data[:1000]
    finally:
        os.close(fd)
    assert m.unmount() == 0
    assert "EIO" not in m.output() and "cannot refresh" not in m.output(), m.output()


# ---- a token on the command line ----------------------------------------------------
@pytest.mark.parametrize("mode, token_args", [
    ("daemon", ["--os-auth-token", "alice-token"]),
    ("foreground", ["--os-auth-token=alice-token"]),
])
def test_a_token_given_on_the_command_line_is_not_in_the_mounts_cmdline(
        glance_clean, tmp_path, image, mounts, mode, token_args):
    paths, procs, pids = mounts
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    env = {"OS_IMAGE_URL": glance_clean.url}
    paths.append(mnt)
    if mode == "daemon":
        mnt.mkdir()
        proc = imagefs("mount", str(mnt), "--cache-dir", str(cache), *token_args, env=env)
        assert proc.returncode == 0, proc.stderr
        pid = daemon_pid(cache)
        pids.append(pid)
    else:
        m = Mount(mnt, cache, env, *token_args)
        procs.append(m.proc)
        pid = m.proc.pid
    args = cmdline(pid)
    assert "imagefs" in " ".join(args) and str(mnt) in args
    assert not any("alice-token" in arg for arg in args), args
    assert "--os-auth-token" not in " ".join(args)
    assert image[0] in os.listdir(mnt)
    assert imagefs("umount", str(mnt)).returncode == 0
