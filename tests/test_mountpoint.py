"""imagefs.mountpoint: what is mounted where, and readying a mount point."""

import subprocess
from pathlib import Path

import pytest

from imagefs.errors import ConfigError, ImagefsError
from imagefs.mountpoint import (MountState, mount_type, prepare, probe, unmount,
                                unmount_command)

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 0:35 / /mnt/with\\040space rw - fuse.imagefs imagefs ro\n"
    "41 22 0:36 / /mnt/twice rw - tmpfs tmpfs rw\n"
    "42 41 0:37 / /mnt/twice rw shared:7 master:2 - fuse.imagefs imagefs ro\n"
    "garbage\n")


@pytest.fixture
def mountinfo(tmp_path):
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    return str(path)


def test_mount_type_reads_the_topmost_mount_with_escapes(mountinfo):
    assert mount_type(Path("/mnt/with space"), mountinfo) == "fuse.imagefs"
    assert mount_type(Path("/mnt/twice"), mountinfo) == "fuse.imagefs"
    assert mount_type(Path("/"), mountinfo) == "ext4"
    assert mount_type(Path("/mnt/nothing"), mountinfo) is None
    assert mount_type(Path("/"), "/nonexistent/mountinfo") is None


def test_a_plain_directory_is_not_mounted(tmp_path):
    assert probe(tmp_path) == MountState(None)


def test_a_live_tmpfs_mount_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)
    try:
        assert probe(target) == MountState("tmpfs", dead=False)
        with pytest.raises(ConfigError, match=r"is already a mount point \(tmpfs\)"):
            prepare(target)
    finally:
        subprocess.run(["umount", str(target)], check=True)


@pytest.mark.parametrize("make, says", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text(""), "is not a directory"),
    (lambda p: (p.mkdir(), (p / "f").write_text("")), "is not empty"),
])
def test_a_mount_point_must_be_an_empty_directory(tmp_path, make, says):
    path = tmp_path / "m"
    make(path)
    with pytest.raises(ConfigError, match=says):
        prepare(path)


def test_nonempty_allows_a_directory_with_files(tmp_path):
    (tmp_path / "f").write_text("")
    prepare(tmp_path, nonempty=True)


def test_unmount_command_is_lazy_on_request(tmp_path):
    assert unmount_command(tmp_path, lazy=True)[-2:] in (["-z", str(tmp_path)],
                                                         ["-l", str(tmp_path)])
    assert unmount_command(tmp_path)[-1] == str(tmp_path)


def test_unmount_of_what_is_not_mounted_says_why_in_one_line(tmp_path):
    with pytest.raises(ImagefsError, match=f"cannot unmount {tmp_path}: .+") as exc:
        unmount(tmp_path)
    assert "\n" not in str(exc.value)
