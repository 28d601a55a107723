"""fstab lines: mount.imagefs as mount(8) runs it, and the options it takes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ALICE, make_image

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver
from imagefs.fstab import translate

HELPER = Path("/sbin/mount.imagefs")


def test_options_become_imagefs_mount_options():
    assert translate("glance", "/m", "_netdev,rw,defaults,os_cloud=c,cache-dir=/var/c,"
                     "allow_other,gid=kvm,nofail,x-systemd.automount") == \
        ["mount", "/m", "--os-cloud", "c", "--cache-dir", "/var/c", "--allow-other",
         "--gid", "kvm"]
    assert translate("store:/srv/i", "/m", "ro,read_deadline=5") == \
        ["mount", "/m", "--store", "/srv/i", "--read-deadline", "5"]


@pytest.mark.parametrize("source,options,says", [
    ("glance", "colour=blue", "unknown imagefs mount option 'colour'"),
    ("glance", "allow_other=yes", "takes no value"),
    ("glance", "cache_dir", "needs a value"),
    ("glance", "foreground", "unknown imagefs mount option"),
    ("nfs:/x", "", "use 'glance' or 'store:/path'"),
])
def test_bad_entries_are_one_line_errors(source, options, says):
    proc = subprocess.run([sys.executable, "-m", "imagefs.fstab", source, "/nonexistent",
                           "-o", options], capture_output=True, text=True)
    assert proc.returncode == 2 and says in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture
def helper():
    """mount.imagefs where mount(8) looks for it, for this test only."""
    if os.getuid() != 0:
        pytest.skip("mount(8) with a helper needs root")
    if HELPER.exists() or HELPER.is_symlink():
        pytest.skip(f"{HELPER} exists already; not touching it")
    script = Path(sys.executable).parent / "mount.imagefs"
    if not script.exists():
        pytest.skip(f"{script} is not installed (scripts/setup installs it)")
    HELPER.symlink_to(script)
    yield HELPER
    HELPER.unlink()


@pytest.mark.mount
@pytest.mark.glance
def test_mount_a_mounts_an_fstab_line(helper, glance_clean, tmp_path):
    api = API(GlanceDriver(glance_clean.url))
    data = b"from an fstab line\n" * 100
    image_id = make_image(api, ALICE, "fstab", data=data)["id"]
    token = tmp_path / "token"
    token.write_text("alice-token\n")
    token.chmod(0o600)
    mnt = tmp_path / "images"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"glance {mnt} imagefs _netdev,os_image_url={glance_clean.url},"
                     f"os_auth_token_file={token},cache_dir={tmp_path / 'cache'},"
                     f"allow_other,gid=0,file_mode=0440 0 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    proc = subprocess.run(["mount", "-T", str(fstab), "-a", "-t", "imagefs"],
                          capture_output=True, text=True, env=env, timeout=120)
    try:
        assert proc.returncode == 0, proc.stderr
        assert os.path.ismount(mnt)
        assert (mnt / image_id / "data").read_bytes() == data
        assert oct(os.stat(mnt / image_id / "data").st_mode & 0o777) == "0o440"
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=True)
        for _ in range(100):
            if not (tmp_path / "cache" / "lock").exists() or not _locked(tmp_path / "cache"):
                break
            time.sleep(0.1)


def _locked(cache: Path) -> bool:
    import fcntl
    try:
        fd = os.open(cache / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
