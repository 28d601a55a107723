"""Who may read the mount: --uid, --gid, --file-mode and --dir-mode, enforced by the
kernel (``default_permissions``), tried as real users other than the mount's."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import ALICE, make_image
from test_mount import Mount

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver

pytestmark = [pytest.mark.mount, pytest.mark.glance]

GROUP = "imagefs-readers"
READER, OUTSIDER = "imagefs-reader", "imagefs-outsider"

if os.getuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
    pytest.skip("needs root, useradd and runuser", allow_module_level=True)


@pytest.fixture(scope="module")
def users():
    """A group with one member, and a user outside it (created once, kept)."""
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True)
    for user, groups in ((READER, [GROUP]), (OUTSIDER, [])):
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/false",
                            *(["--groups", ",".join(groups)] if groups else []), user],
                           check=True)
    return READER, OUTSIDER


def as_user(user: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, text=True)


def test_a_group_may_read_and_others_may_not(users, glance_clean, tmp_path):
    api = API(GlanceDriver(glance_clean.url))
    data = b"for the kvm group only\n" * 1000
    image_id = make_image(api, ALICE, "perm", data=data)["id"]
    top = Path(tempfile.mkdtemp(prefix="imagefs-perm-"))
    top.chmod(0o755)  # the other users must reach the mount point
    m = Mount(top / "mnt", tmp_path / "cache", {"OS_AUTH_TOKEN": "alice-token",
                                               "OS_IMAGE_URL": glance_clean.url},
              "--allow-other", "--gid", GROUP, "--file-mode", "0440", "--dir-mode", "0550")
    try:
        data_path = m.image(image_id) / "data"
        st = os.stat(data_path)
        assert (st.st_mode & 0o777, st.st_gid) == (0o440, grp.getgrnam(GROUP).gr_gid)
        assert os.stat(m.path).st_mode & 0o777 == 0o550
        reader = as_user(READER, "cat", str(data_path))
        assert reader.returncode == 0, reader.stderr
        assert reader.stdout.encode() == data
        outsider = as_user(OUTSIDER, "cat", str(data_path))
        assert outsider.returncode != 0 and "Permission denied" in outsider.stderr
        listing = as_user(OUTSIDER, "ls", str(m.path))
        assert listing.returncode != 0 and "Permission denied" in listing.stderr
    finally:
        assert m.unmount() == 0, m.output()
        shutil.rmtree(top, ignore_errors=True)


def test_modes_with_write_bits_are_refused(tmp_path):
    from test_mount import imagefs
    (tmp_path / "mnt").mkdir()
    proc = imagefs("mount", str(tmp_path / "mnt"), "--store", str(tmp_path / "store"),
                   "--file-mode", "0644", "--cache-dir", str(tmp_path / "c"))
    assert proc.returncode == 2 and "read-only" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
