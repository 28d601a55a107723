"""``imagefs mount`` and ``umount``: what is refused before anything is mounted.

Mounting itself is tests/test_mount.py's (real mounts against a real Glance)."""

import subprocess

from imagefs.cli import main
from imagefs.commands import mount
from imagefs.commands.options import service_options


def test_the_mount_parser_is_returned_with_every_option():
    import argparse

    top = argparse.ArgumentParser().add_subparsers()
    parser = mount.add_arguments(top, service_options())
    args = parser.parse_args(["/m", "--cache-size", "1G", "--os-cloud", "c", "--direct", "file"])
    assert (args.mountpoint, args.cache_size, args.os_cloud, args.direct) == \
        ("/m", "1G", "c", "file")
    assert args.run is mount.run and args.block_size is None  # MountConfig's default


def test_umount_of_a_directory_that_is_not_mounted(tmp_path, capsys):
    assert main(["umount", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"imagefs: {tmp_path} is not mounted\n"


def test_umount_leaves_a_mount_that_is_not_imagefs(tmp_path, capsys):
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp_path)], check=True)
    try:
        assert main(["umount", str(tmp_path)]) == 2
        assert capsys.readouterr().err == (f"imagefs: {tmp_path} is a tmpfs mount, not an "
                                           "imagefs one; not unmounting it\n")
    finally:
        subprocess.run(["umount", str(tmp_path)], check=True)


def test_a_mount_point_that_is_not_empty_is_refused_before_any_request(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "f").write_text("")
    assert main(["mount", str(tmp_path / "m"), "--os-image-url", "http://127.0.0.1:9"]) == 2
    assert "is not empty" in capsys.readouterr().err
