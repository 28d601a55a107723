"""Real mounts through faults of the service around them: credentials and a killed daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ALICE, make_image, random_bytes
from test_mount import Mount, imagefs

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver

pytestmark = [pytest.mark.mount, pytest.mark.glance]
MiB = 1 << 20

#: A FUSE filesystem that is not imagefs: it mounts and answers nothing.
OTHER_FS = """\
import sys
import pyfuse3
import trio
pyfuse3.init(pyfuse3.Operations(), sys.argv[1], {"fsname=otherfs", "subtype=otherfs"})
trio.run(pyfuse3.main)
"""


def in_mountinfo(path: Path) -> bool:
    """Whether the kernel lists a mount at ``path``, live or dead (ismount says False on dead)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {check}")
        time.sleep(0.05)


def stat_works(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError:
        return False
    return True


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


# ---- a killed daemon ------------------------------------------------------------------
@pytest.mark.parametrize("root_attributes", ["still cached", "expired"])
def test_a_mount_over_a_mount_left_dead_by_kill_9_clears_it_and_serves_reads(
        glance_clean, tmp_path, image, mounts, root_attributes):
    paths, procs, pids = mounts
    env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url}
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    paths.append(mnt)
    first = Mount(mnt, cache, env)
    procs.append(first.proc)
    image_id, data = image
    assert (first.image(image_id) / "data").read_bytes()[:MiB] == data[:MiB]
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=30)
    with pytest.raises(OSError):
        os.statvfs(mnt)  # dead: Transport endpoint is not connected
    assert in_mountinfo(mnt)
    if root_attributes == "expired":  # past the root's attribute TTL (1 s here)
        wait_until(lambda: not stat_works(mnt))

    again = imagefs("mount", str(mnt), "--cache-dir", str(cache), env=env)
    assert again.returncode == 0, again.stderr
    pids.append(daemon_pid(cache))
    assert "dead imagefs mount" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert os.path.ismount(mnt)
    assert (mnt / image_id / "data").read_bytes() == data
    done = imagefs("umount", str(mnt))
    assert done.returncode == 0, done.stderr
    assert not in_mountinfo(mnt)


def test_umount_of_a_mount_left_dead_by_kill_9_clears_it(glance_clean, tmp_path, mounts):
    paths, procs, _ = mounts
    m = Mount(tmp_path / "mnt", tmp_path / "cache",
              {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url})
    paths.append(m.path)
    procs.append(m.proc)
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(timeout=30)
    assert in_mountinfo(m.path)
    wait_until(lambda: not stat_works(m.path))  # past the root's attribute TTL (1 s here)
    done = imagefs("umount", str(m.path))
    assert done.returncode == 0, done.stderr
    assert not in_mountinfo(m.path)
    assert m.path.is_dir()


def test_a_live_imagefs_mount_is_refused_with_the_command_that_unmounts_it(
        glance_clean, tmp_path, mounts):
    paths, procs, _ = mounts
    env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url}
    m = Mount(tmp_path / "mnt", tmp_path / "cache", env)
    paths.append(m.path)
    procs.append(m.proc)
    second = imagefs("mount", str(m.path), "--cache-dir", str(tmp_path / "other"), env=env)
    assert second.returncode == 2
    assert f"imagefs umount {m.path}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert m.unmount() == 0


def test_a_dead_mount_of_another_fuse_filesystem_is_refused_with_the_command_that_clears_it(
        glance_clean, tmp_path, mounts):
    paths, procs, _ = mounts
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    paths.append(mnt)
    other = subprocess.Popen([sys.executable, "-c", OTHER_FS, str(mnt)])
    procs.append(other)
    wait_until(lambda: in_mountinfo(mnt) or other.poll() is not None)
    assert other.poll() is None
    other.send_signal(signal.SIGKILL)
    other.wait(timeout=30)
    proc = imagefs("mount", str(mnt), "--cache-dir", str(tmp_path / "cache"),
                   env={"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url})
    assert proc.returncode == 2
    assert f"fusermount3 -u {mnt}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert in_mountinfo(mnt)  # left as it was


def test_systemd_hears_ready_once_the_mount_answers_and_stopping_at_unmount(glance_clean,
                                                                           tmp_path):
    from test_mount import NotifySocket, alice_mounts

    notify = NotifySocket(tmp_path)
    try:
        m = alice_mounts(glance_clean, tmp_path, [], {"NOTIFY_SOCKET": notify.address})()
        try:
            notify.wait_for("READY=1")
            assert os.path.ismount(m.path)  # ready means the mount answers
            assert any(line.startswith("STATUS=") for msg in notify.messages
                       for line in msg.splitlines())
        finally:
            assert m.unmount() == 0, m.output()
        notify.wait_for("STOPPING=1")
    finally:
        notify.close()
    print(f"\nnotify socket got: {notify.messages}")


def test_status_counts_what_glance_sent_and_says_where_data_came_from(glance_clean, tmp_path):
    import tempfile

    from imagefs.api import API
    from imagefs.drivers.glance import GlanceDriver

    api = API(GlanceDriver(glance_clean.url))
    data = random_bytes(6 * 2**20 + 5)
    image_id = make_image(api, ALICE, "status", data=data, name="status-image")["id"]
    short = Path(tempfile.mkdtemp(prefix="ifs-"))  # a unix socket's path is short
    m = Mount(tmp_path / "mnt", short / "cache",
              {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url})
    try:
        before = json.loads(imagefs("status", str(m.path), "-f", "json").stdout)
        assert before["fetched_bytes"] == 0 and before["images"] == []
        assert "Glance at" in before["service"]
        glance_clean.reset()
        assert (m.image(image_id) / "data").read_bytes() == data
        after = json.loads(imagefs("status", str(m.path), "-f", "json").stdout)
        sent = glance_clean.stats()["data_bytes"]
        print(f"\nstatus: fetched {after['fetched_bytes']} bytes; Glance sent {sent}")
        assert abs(after["fetched_bytes"] - sent) <= sent / 100
        image = next(i for i in after["images"] if i["id"] == image_id)
        assert image["fetched_bytes"] == len(data) and image["path"] == "glance-ranged"
        assert image["name"] == "status-image" and image["size"] == len(data)
        table = imagefs("status", str(m.path))
        assert table.returncode == 0 and image_id in table.stdout
        assert oct((short / "cache" / "control.sock").stat().st_mode & 0o777) == "0o600"
    finally:
        assert m.unmount() == 0, m.output()
    gone = imagefs("status", str(m.path))
    assert gone.returncode == 2 and len(gone.stderr.strip().splitlines()) == 1


def test_metrics_are_scraped_with_the_bytes_glance_sent(glance_clean, tmp_path):
    import urllib.request

    from glance_server import free_port

    from imagefs.api import API
    from imagefs.drivers.glance import GlanceDriver

    api = API(GlanceDriver(glance_clean.url))
    data = random_bytes(3 * 2**20 + 11)
    image_id = make_image(api, ALICE, "metrics", data=data)["id"]
    port = free_port()
    m = Mount(tmp_path / "mnt", tmp_path / "cache",
              {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url},
              "--metrics", f"127.0.0.1:{port}")
    try:
        glance_clean.reset()
        assert (m.image(image_id) / "data").read_bytes() == data
        with pytest.raises(FileNotFoundError):
            (m.image(image_id) / "nothing").read_bytes()
        # Again past the page cache (O_DIRECT): every block from a cache tier (the
        # memory tier gives up blocks the page cache holds, so mostly the disk's).
        again = subprocess.run(["dd", f"if={m.image(image_id) / 'data'}", "of=/dev/null",
                                "bs=1M", "iflag=direct", "status=none"], capture_output=True,
                               text=True)
        assert again.returncode == 0, again.stderr
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        assert m.unmount() == 0, m.output()
    values = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    print(f"\nscraped: imagefs_fetched_bytes_total {values['imagefs_fetched_bytes_total']:.0f}, "
          f"Glance sent {glance_clean.stats()['data_bytes']}")
    assert values["imagefs_fetched_bytes_total"] == glance_clean.stats()["data_bytes"] == len(data)
    hits = [values[f'imagefs_cache_hits_total{{tier="{tier}"}}'] for tier in ("memory", "disk")]
    print(f"cache hits: memory {hits[0]:.0f}, disk {hits[1]:.0f}")
    assert sum(hits) >= -(-len(data) // 2**20)  # each 1 MiB read of the second pass
    assert values['imagefs_errors_total{errno="ENOENT"}'] >= 1
    assert values["imagefs_fetch_seconds_count"] >= 1
    assert "imagefs_cache_bytes" in text.decode() and "imagefs_streams_open" in text.decode()


def test_a_bad_metrics_address_is_a_usage_error(tmp_path):
    (tmp_path / "mnt").mkdir()
    proc = imagefs("mount", str(tmp_path / "mnt"), "--store", str(tmp_path / "s"),
                   "--metrics", "nowhere")
    assert proc.returncode == 2 and "ADDR:PORT" in proc.stderr
