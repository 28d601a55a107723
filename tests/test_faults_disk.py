"""Faults of the disk cache's directory and filesystem, through real mounts on the real
Glance: a directory that is not a cache, one that cannot be created, a small filesystem, a
read-only one, and one that turns read-only while mounted."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import ALICE, make_image, random_bytes
from test_mount import Mount, imagefs

from imagefs.api import API
from imagefs.cache import DiskCache
from imagefs.drivers.glance import GlanceDriver
from imagefs.errors import ConfigError
from imagefs.mount import lock_cache_dir

pytestmark = [pytest.mark.mount, pytest.mark.glance]
MiB = 1 << 20

if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
    pytest.skip("needs /dev/fuse and root (tmpfs and bind mounts)", allow_module_level=True)


class Mounts:
    """Filesystems and imagefs mounts made by one test; ``close`` unmounts them all,
    imagefs first."""

    def __init__(self, tmp_path: Path, glance_url: str):
        self.tmp_path = tmp_path
        self.env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_url}
        self.filesystems: list[Path] = []
        self.imagefs_mounts: list[Mount] = []

    def tmpfs(self, target: Path, size: str) -> Path:
        return self._mount(target, "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs")

    def bind(self, source: Path, target: Path) -> Path:
        source.mkdir(parents=True, exist_ok=True)
        return self._mount(target, "--bind", str(source))

    @staticmethod
    def read_only(target: Path) -> None:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True,
                       capture_output=True)

    def _mount(self, target: Path, *args: str) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
        self.filesystems.append(target)
        return target

    def imagefs(self, cache_dir: Path, name: str = "mnt", *extra: str) -> Mount:
        m = Mount(self.tmp_path / name, cache_dir, self.env, *extra)
        self.imagefs_mounts.append(m)
        return m

    def close(self) -> list[str]:
        """Unmount everything; the logs of imagefs mounts that did not end cleanly."""
        bad = []
        for m in self.imagefs_mounts:
            try:
                if m.unmount() != 0 or "Traceback" in m.output():
                    bad.append(m.output())
            except Exception as exc:  # go on: the filesystems below must be unmounted
                bad.append(f"{exc}\n{m.output()}")
        for target in reversed(self.filesystems):
            for _ in range(100):  # a daemon may still be exiting, its files open
                if subprocess.run(["umount", str(target)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)
        return bad


@pytest.fixture
def mounts(glance_clean, tmp_path):
    made = Mounts(tmp_path, glance_clean.url)
    try:
        yield made
    finally:
        bad = made.close()
    assert not bad, bad[0]


def upload(glance, data: bytes, tag: str) -> str:
    return make_image(API(GlanceDriver(glance.url)), ALICE, tag, data=data)["id"]


def read_back(path: Path, data: bytes, chunk: int = 4 * MiB) -> None:
    """Read ``path`` whole and compare it with ``data``, ``chunk`` bytes at a time."""
    with open(path, "rb") as f:
        for offset in range(0, len(data) + 1, chunk):
            got = f.read(chunk)
            assert got == data[offset:offset + chunk], f"bytes differ at {offset}"
        assert f.read(1) == b""


def warning_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line]


def tree(root: Path) -> list[tuple[str, int, bytes]]:
    return sorted((str(p.relative_to(root)), stat.S_IMODE(p.lstat().st_mode),
                   p.read_bytes() if p.is_file() else b"") for p in [root, *root.rglob("*")])


def refused_to_mount(mnt: Path, proc: subprocess.CompletedProcess) -> None:
    """The mount failed with exit 2 and one line on stderr; nothing is mounted."""
    try:
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "internal error" not in proc.stderr
    finally:  # (a mount that should not have happened is still unmounted)
        if os.path.ismount(mnt):
            imagefs("umount", str(mnt))
    assert not os.path.ismount(mnt)


# ---- the directory -----------------------------------------------------------------------
def test_mount_refuses_a_non_empty_directory_that_is_not_a_cache_and_leaves_it_as_it_was(
        mounts, tmp_path):
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    (home / "tmp" / "draft").write_text("mine")
    (home / "notes").write_text("mine too")
    home.chmod(0o755)
    before = tree(home)
    (tmp_path / "mnt").mkdir()
    proc = imagefs("mount", str(tmp_path / "mnt"), "--cache-dir", str(home), env=mounts.env)
    refused_to_mount(tmp_path / "mnt", proc)
    assert "is not empty and is not an imagefs cache" in proc.stderr
    assert "--cache-dir" in proc.stderr
    assert tree(home) == before


@pytest.mark.parametrize("fault", ["full", "read_only"])
def test_a_cache_dir_that_cannot_be_created_fails_the_mount_with_the_reason(
        mounts, tmp_path, fault):
    parent = tmp_path / "fs"
    if fault == "full":
        mounts.tmpfs(parent, "1m")
        with pytest.raises(OSError):
            (parent / "filler").write_bytes(bytes(2 * MiB))
        reason = "No space left on device"
    else:
        mounts.bind(tmp_path / "source", parent)
        mounts.read_only(parent)
        reason = "Read-only file system"
    (tmp_path / "mnt").mkdir()
    proc = imagefs("mount", str(tmp_path / "mnt"), "--cache-dir", str(parent / "cache"),
                   env=mounts.env)
    refused_to_mount(tmp_path / "mnt", proc)
    assert f"cannot create cache directory {parent / 'cache'}: {reason}" in proc.stderr
    assert not (parent / "cache").exists()


# ---- free space --------------------------------------------------------------------------
def test_a_200_mib_image_read_through_a_64_mib_tmpfs_cache_leaves_5_percent_free(
        mounts, glance_clean, tmp_path):
    data = random_bytes(200 * MiB)
    image = upload(glance_clean, data, "tmpfs-cache")
    cache = mounts.tmpfs(tmp_path / "tmpfs", "64m")
    st = os.statvfs(cache)
    size = st.f_blocks * st.f_frsize
    lowest = [st.f_bavail * st.f_frsize]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            s = os.statvfs(cache)
            lowest[0] = min(lowest[0], s.f_bavail * s.f_frsize)
            time.sleep(0.002)
    m = mounts.imagefs(cache)
    glance_clean.reset()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        read_back(m.image(image) / "data", data)
        assert m.unmount() == 0, m.output()  # the blocks still queued are written too
    finally:
        stop.set()
        sampler.join()
    s = os.statvfs(cache)
    lowest[0] = min(lowest[0], s.f_bavail * s.f_frsize)
    warnings = warning_lines(m.output())
    fetched = glance_clean.stats()["data_bytes"]
    print(f"\n200 MiB through a 64 MiB tmpfs cache: at least {lowest[0] / MiB:.1f} MiB "
          f"({100 * lowest[0] / size:.1f}%) free, {len(warnings)} warnings, "
          f"{fetched} bytes from Glance")
    assert lowest[0] >= 0.05 * size
    assert len(warnings) < 10, "\n".join(warnings[:20])
    assert fetched >= len(data)


# ---- read-only ---------------------------------------------------------------------------
def test_a_cache_on_a_read_only_bind_mount_serves_a_cached_image_without_fetching(
        mounts, glance_clean, tmp_path):
    data = random_bytes(6 * MiB + 12_345)
    image = upload(glance_clean, data, "ro-cache")
    source = tmp_path / "cache-source"
    first = mounts.imagefs(source, name="first")
    read_back(first.image(image) / "data", data)
    assert first.unmount() == 0, first.output()
    before = tree(source)
    cache = mounts.bind(source, tmp_path / "cache")
    mounts.read_only(cache)
    glance_clean.reset()
    second = mounts.imagefs(cache, name="second")
    read_back(second.image(image) / "data", data)
    assert glance_clean.stats()["data_bytes"] == 0
    log = second.output()
    assert "is read-only: holding its lock without writing the pid" in log
    assert len(warning_lines(log)) == 1 and "read-only" in warning_lines(log)[0], log
    assert tree(source) == before


def test_a_cache_that_turns_read_only_while_mounted_serves_old_groups_with_one_warning(
        mounts, glance_clean, tmp_path):
    data = random_bytes(40 * MiB + 777)  # three groups of 16 blocks of 1 MiB
    image = upload(glance_clean, data, "ro-later")
    cache = mounts.bind(tmp_path / "cache-source", tmp_path / "cache")
    first = mounts.imagefs(cache, "first", "--block-size", "1M")
    read_back(first.image(image) / "data", data)
    assert first.unmount() == 0, first.output()
    long_ago = time.time() - 600  # every group is due a recency touch at its next hit
    groups = [p for p in (cache / "blocks").rglob("*")
              if p.is_file() and p.name != "image.json"]  # group files, not the index
    assert len(groups) == 3
    for group in groups:
        os.utime(group, (long_ago, long_ago))
    second = mounts.imagefs(cache, "second", "--block-size", "1M")
    mounts.read_only(cache)  # (refused with EBUSY if the mount held a file open to write)
    glance_clean.reset()
    read_back(second.image(image) / "data", data)
    assert glance_clean.stats()["data_bytes"] == 0
    log = second.output()
    assert len(warning_lines(log)) == 1, log
    assert "turned read-only" in warning_lines(log)[0]
    assert "treating as a miss" not in log


def test_the_lock_of_a_read_only_cache_dir_is_taken_read_only_or_not_at_all(
        mounts, tmp_path, caplog):
    source = tmp_path / "cache-source"
    DiskCache(source, 1 << 20)  # a cache, never mounted: no lock file
    cache = mounts.bind(source, tmp_path / "cache")
    mounts.read_only(cache)
    with caplog.at_level(logging.INFO, logger="imagefs.cachelock"):
        assert lock_cache_dir(cache) is None
        assert "has no lock file: mounting without the lock" in caplog.text
        (source / "lock").write_text("")  # (the source is still writable)
        fd = lock_cache_dir(cache)
    try:
        assert "holding its lock without writing the pid" in caplog.text
        with pytest.raises(ConfigError, match="in use by another imagefs mount"):
            lock_cache_dir(cache)
    finally:
        os.close(fd)


def test_daemon_mode_on_a_read_only_cache_dir_fails_with_a_reason_that_names_log(
        mounts, glance_clean, tmp_path):
    source = tmp_path / "cache-source"
    data = random_bytes(2 * MiB)
    image = upload(glance_clean, data, "ro-daemon")
    first = mounts.imagefs(source, name="first")
    read_back(first.image(image) / "data", data)
    assert first.unmount() == 0, first.output()
    cache = mounts.bind(source, tmp_path / "cache")
    mounts.read_only(cache)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = imagefs("mount", str(mnt), "--cache-dir", str(cache), env=mounts.env)
    refused_to_mount(mnt, proc)
    assert f"cannot open the log file {cache / 'imagefs.log'}" in proc.stderr
    assert "--log" in proc.stderr
    log = tmp_path / "daemon.log"
    proc = imagefs("mount", str(mnt), "--cache-dir", str(cache), "--log", str(log),
                   env=mounts.env)
    try:
        assert proc.returncode == 0, proc.stderr
        read_back(mnt / image / "data", data)
    finally:
        if os.path.ismount(mnt):
            assert imagefs("umount", str(mnt)).returncode == 0
    assert "Traceback" not in log.read_text()


def test_a_cache_size_beyond_the_filesystem_is_a_warning_and_the_mount_serves(
        mounts, glance_clean, tmp_path):
    data = random_bytes(MiB + 3)
    image = upload(glance_clean, data, "beyond")
    m = mounts.imagefs(tmp_path / "cache", "big", "--cache-size", "1000T")
    read_back(m.image(image) / "data", data)
    warned = warning_lines(m.output())
    assert len(warned) == 1 and "--cache-size 1000.0 TiB is more than the size" in warned[0], \
        m.output()
