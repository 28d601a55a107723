"""utime on ``data`` files (Nova marks base files in use with it); nothing else changes.

The logic (``imagefs.times``, ``ImageFS.set_times``) is called directly; then
through the kernel on a real mount: Nova's ``os.utime(path, None)`` and
explicit times succeed and survive a remount, while every other change, made
as root (who passes the mode bits), is refused.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

import pytest
import trio
from conftest import ALICE, make_image
from test_fs import run_fs
from test_mount import Mount

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver
from imagefs.drivers.local import LocalDriver
from imagefs.fs import DATA, METADATA, ROOT_INODE, FsError
from imagefs.times import DataTimes

T1, T2 = 1_500_000_000_123_456_789, 1_600_000_000_987_654_321


def test_times_are_kept_per_image_version_and_read_back_by_a_new_store(tmp_path):
    times = DataTimes(tmp_path / "times")
    assert times.get("img", "v1") is None
    trio.run(times.set, "img", "v1", T1, T2)
    assert times.get("img", "v1") == (T1, T2)
    assert times.get("img", "v2") is None  # the image changed: its own time again
    again = DataTimes(tmp_path / "times")  # a remount
    assert again.get("img", "v1") == (T1, T2)
    assert DataTimes().get("img", "v1") is None  # in memory only: nothing shared


def test_a_damaged_times_file_is_ignored(tmp_path, caplog):
    (tmp_path / "img.json").write_text("{not json")
    assert DataTimes(tmp_path).get("img", "v1") is None
    assert "ignoring" in caplog.text


def test_set_times_on_data_only_and_a_new_version_shows_its_own_time(tmp_path):
    api = API(LocalDriver(tmp_path / "store"))
    image = make_image(api, ALICE, "times", data=b"x" * 1000)

    async def body(fs):
        d = await fs.lookup(ROOT_INODE, image["id"])
        data = await fs.lookup(d.ino, DATA)
        meta = await fs.lookup(d.ino, METADATA)
        own = data.mtime_ns
        attr = await fs.set_times(data.ino, T1, T2)
        assert (attr.atime_ns, attr.mtime_ns) == (T1, T2)
        assert (await fs.getattr(data.ino)).mtime_ns == T2
        attr = await fs.set_times(data.ino, None, T1)  # mtime alone: atime stays
        assert (attr.atime_ns, attr.mtime_ns) == (T1, T1)
        for ino in (d.ino, meta.ino, ROOT_INODE):
            with pytest.raises(FsError) as e:
                await fs.set_times(ino, T1, T1)
            assert e.value.errno == errno.EROFS
        # The image's bytes change (a new checksum): its own time again.
        fs.records.remember({**fs.records.get(image["id"]).record, "os_hash_value": "0" * 128})
        assert (await fs.getattr(data.ino)).mtime_ns == own
    run_fs(api, ALICE, tmp_path, body)


@pytest.fixture
def image(glance_clean):
    api = API(GlanceDriver(glance_clean.url))
    return make_image(api, ALICE, "nova-times", data=os.urandom(300_000))["id"]


def _mount(glance, tmp_path, name="mnt"):
    return Mount(tmp_path / name, tmp_path / "cache",
                 {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url})


@pytest.mark.mount
@pytest.mark.glance
def test_utime_on_data_through_the_kernel_and_after_a_remount(glance_clean, image, tmp_path):
    m = _mount(glance_clean, tmp_path)
    try:
        data = m.image(image) / "data"
        own = data.stat().st_mtime_ns
        before = time.time()
        os.utime(data, None)  # what Nova does (nova.privsep.path.utime)
        now = data.stat().st_mtime
        assert before - 1 <= now <= time.time() + 1 and now * 1e9 > own
        os.utime(data, ns=(T1, T2))
        st = data.stat()
        assert (st.st_atime_ns, st.st_mtime_ns) == (T1, T2)
        assert subprocess.run(["touch", str(data)]).returncode == 0
        assert data.stat().st_mtime >= before - 1
        os.utime(data, ns=(T1, T2))
        assert data.read_bytes()[:10]  # still readable
    finally:
        assert m.unmount() == 0, m.output()
    again = _mount(glance_clean, tmp_path, "again")
    try:
        assert (again.image(image) / "data").stat().st_mtime_ns == T2
    finally:
        assert again.unmount() == 0, again.output()
    assert "Traceback" not in m.output() + again.output()


@pytest.mark.mount
@pytest.mark.glance
def test_every_other_change_is_refused_even_to_root(glance_clean, image, tmp_path):
    assert os.geteuid() == 0  # root passes the mode bits: the daemon must refuse
    m = _mount(glance_clean, tmp_path)
    try:
        d = m.image(image)
        data, meta = d / "data", d / "metadata.json"
        size = data.stat().st_size
        shell = [  # as root, each fails with EROFS (or EPERM)
            f"truncate -s 0 {data}",
            f"chmod 777 {data}",
            f"chown 1:1 {data}",
            f"touch {d}/newfile",
            f"touch {m.path}/newfile",
            f"mkdir {d}/sub",
            f"rm -f {data}",
            f"mv {data} {d}/moved",
            f"ln {data} {d}/hard",
            f"ln -s data {d}/soft",
            f"setfattr -n user.x -v 1 {data}",
            f"touch {meta}",
            f"touch {d}",
            f"dd if=/dev/zero of={data} bs=1 count=1 conv=notrunc",
        ]
        for cmd in shell:
            if cmd.startswith("setfattr") and not _have("setfattr"):
                continue
            out = subprocess.run(cmd, shell=True, capture_output=True, text=True)
            assert out.returncode != 0, cmd
            assert "Read-only file system" in out.stderr or \
                "Operation not permitted" in out.stderr, (cmd, out.stderr)
        calls = [lambda: os.open(data, os.O_WRONLY), lambda: os.open(data, os.O_RDWR),
                 lambda: os.open(data, os.O_RDONLY | os.O_TRUNC),
                 lambda: os.open(d / "new", os.O_WRONLY | os.O_CREAT, 0o644),
                 lambda: os.utime(meta, None), lambda: os.utime(d, ns=(T1, T1)),
                 lambda: os.utime(m.path, None), lambda: os.rmdir(d),
                 lambda: os.truncate(data, 1), lambda: os.setxattr(data, "user.a", b"1")]
        for call in calls:
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno in (errno.EROFS, errno.EPERM), e.value
        assert data.stat().st_size == size and sorted(os.listdir(d)) == ["data",
                                                                          "metadata.json"]
        assert oct(data.stat().st_mode & 0o7777) == "0o444"
    finally:
        assert m.unmount() == 0, m.output()
    assert "Traceback" not in m.output()


def _have(program: str) -> bool:
    return shutil.which(program) is not None
