"""Real mounts through the kernel, against the real Glance, read by real tools."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ADMIN, ALICE, BOB, make_image, random_bytes

from imagefs.api import API
from imagefs.blocks import FAILURE_GRACE
from imagefs.drivers.glance import GlanceDriver

pytestmark = [pytest.mark.mount, pytest.mark.glance]
MiB = 1 << 20

if not os.path.exists("/dev/fuse") or not shutil.which("qemu-img"):
    pytest.skip("needs /dev/fuse and qemu-img", allow_module_level=True)


def imagefs(*args, env=None, **kw):
    base = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    return subprocess.run([sys.executable, "-m", "imagefs", *args], capture_output=True,
                          text=True, env={**base, **(env or {})}, timeout=120, **kw)


class Mount:
    """``imagefs mount --foreground`` in a subprocess.  Profiles are not published
    unless ``extra`` says ``--publish-profiles``: tests count what Glance sends, and a
    published profile's bytes would be in that count."""

    def __init__(self, mountpoint: Path, cache_dir: Path, env: dict, *extra: str):
        self.path, self.cache_dir, self.env = mountpoint, cache_dir, env
        mountpoint.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        self.log = open(cache_dir.parent / f"{mountpoint.name}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imagefs", "mount", str(mountpoint), "--foreground",
             "--cache-dir", str(cache_dir), "--timeout", "3", "--read-deadline", "8",
             "--list-ttl", "1", "--record-ttl", "1", "-v", "--no-publish-profiles", *extra],
            env={**base, **env}, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"mount failed:\n{self.log.read()}")
            time.sleep(0.05)

    def image(self, image_id: str) -> Path:
        return self.path / image_id

    def unmount(self) -> int:
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], check=True)
        return self.proc.wait(timeout=30)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()


def alice_mounts(glance, tmp_path, mounts: list, env: dict | None = None):
    """make(*extra, name=...) -> a Mount as alice on ``glance`` (``env`` added), each
    kept in ``mounts`` for the caller's teardown."""
    alice = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance.url, **(env or {})}

    def make(*extra, name="mnt"):
        m = Mount(tmp_path / name, tmp_path / f"cache-{name}", alice, *extra)
        mounts.append(m)
        return m
    return make


class NotifySocket:
    """systemd's notify socket, as a unit's: ``wait_for(word, count)`` reads until
    ``word`` has come ``count`` times; ``messages`` holds what came."""

    def __init__(self, tmp_path):
        import socket

        self.address = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.sock.settimeout(30)
        self.messages: list[str] = []

    def wait_for(self, word: str, count: int = 1) -> None:
        while sum(word in msg for msg in self.messages) < count:
            self.messages.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def mount(glance_clean, tmp_path):
    """mount(env=alice, cache=...) → a Mount, unmounted (and checked) at teardown."""
    mounts = []
    alice = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url}

    def make(env=None, cache_dir=None, name="mnt", extra=()):
        m = Mount(tmp_path / name, cache_dir or tmp_path / f"cache-{name}", env or alice, *extra)
        mounts.append(m)
        return m
    yield make
    for m in mounts:
        code = m.unmount()
        assert code == 0, m.output()
        assert "Traceback" not in m.output(), m.output()


@pytest.fixture(scope="module")
def images(glance, tmp_path_factory):
    """A raw image, a sparse 20 GiB qcow2 and their source files, owned by alice."""
    work = tmp_path_factory.mktemp("sources")
    api = API(GlanceDriver(glance.url))
    raw = work / "raw.img"
    raw.write_bytes(random_bytes(9 * MiB + 12_345))
    sparse = work / "sparse.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(sparse), "20G"], check=True)
    writes = [("0xab", 0), ("0xcd", 5 << 30), ("0xef", 19 << 30)]
    checked = {0, 5 << 10, 10 << 10, 19 << 10}  # MiB offsets the overlay test reads
    writes += [(hex(0x10 + i), mib << 20) for i in range(40)
               if (mib := (i * 613 + 101) % 20000) not in checked]
    cmds = []
    for pattern, offset in writes:
        cmds += ["-c", f"write -q -P {pattern} {offset} 1M"]
    subprocess.run(["qemu-io", "-f", "qcow2", *cmds, str(sparse)], check=True)
    tag = "mount-tests"

    def upload(path, fmt, ctx=ALICE, **info):
        with open(path, "rb") as f:
            return make_image(api, ctx, tag, data=f, disk_format=fmt, **info)["id"]
    return {
        "raw": upload(raw, "raw"), "raw_path": raw,
        "qcow2": upload(sparse, "qcow2"), "qcow2_path": sparse,
        "public": upload(raw, "raw", ADMIN, visibility="public"),
        "bobs": upload(raw, "raw", BOB, visibility="private"),
        "api": api,
    }


def test_listing_visibility_and_metadata(mount, images):
    m = mount()
    names = set(os.listdir(m.path))
    assert {images["raw"], images["qcow2"], images["public"]} <= names
    assert images["bobs"] not in names
    with pytest.raises(FileNotFoundError):
        os.stat(m.image(images["bobs"]))
    with pytest.raises(FileNotFoundError):
        open(m.image(images["bobs"]) / "data", "rb")
    image_dir = m.image(images["raw"])
    assert sorted(os.listdir(image_dir)) == ["data", "metadata.json"]
    meta = image_dir / "metadata.json"
    text = meta.read_bytes()
    assert json.loads(text) == images["api"].get(ALICE, images["raw"])
    assert os.stat(meta).st_size == len(text)
    st = os.stat(image_dir / "data")
    assert st.st_size == images["raw_path"].stat().st_size
    assert oct(st.st_mode & 0o777) == "0o444"
    assert oct(os.stat(image_dir).st_mode & 0o777) == "0o555"
    assert os.stat(image_dir / "data").st_mtime == st.st_mtime  # stable


def test_cp_and_random_preads_are_byte_exact(mount, images, tmp_path):
    m = mount()
    source = images["raw_path"].read_bytes()
    fd = os.open(m.image(images["raw"]) / "data", os.O_RDONLY)
    try:
        rng = random.Random(11)
        size = len(source)
        cases = [(0, 1), (MiB - 1, 2), (size - 100, 100), (size - 1, 50), (size, 10),
                 (size + MiB, 10), (3 * MiB - 7, 2 * MiB + 14)]
        cases += [(rng.randrange(size), rng.randrange(1, 3 * MiB)) for _ in range(80)]
        for offset, length in cases:
            assert os.pread(fd, length, offset) == source[offset:offset + length], (offset, length)
    finally:
        os.close(fd)
    subprocess.run(["cp", str(m.image(images["raw"]) / "data"), str(tmp_path / "copy")],
                   check=True)
    assert (tmp_path / "copy").read_bytes() == source


def test_qemu_img_info_on_sparse_qcow2_fetches_little(mount, images, glance_clean):
    m = mount()
    data = m.image(images["qcow2"]) / "data"
    os.stat(data)
    glance_clean.reset()
    info = subprocess.run(["qemu-img", "info", "--output=json", str(data)],
                          capture_output=True, text=True, check=True)
    fetched = glance_clean.stats()["data_bytes"]
    size = images["qcow2_path"].stat().st_size
    assert json.loads(info.stdout)["virtual-size"] == 20 << 30
    print(f"\nqemu-img info fetched {fetched} bytes of a {size}-byte qcow2 "
          f"({100 * fetched / size:.1f}%)")
    assert fetched <= 2 * MiB < size / 10


def test_qemu_img_compare_and_an_overlay_on_the_mount(mount, images, tmp_path):
    m = mount()
    data = m.image(images["qcow2"]) / "data"
    subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(data),
                    str(images["qcow2_path"])], check=True, capture_output=True)
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(data), "-F", "qcow2",
                    str(overlay)], check=True)
    reads = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0xab 0 1M", "-c",
         f"read -P 0xcd {5 << 30} 1M", "-c", f"read -P 0xef {19 << 30} 1M", "-c",
         f"read -P 0 {10 << 30} 1M", str(overlay)], capture_output=True, text=True)
    assert reads.returncode == 0, reads.stdout + reads.stderr
    assert "Pattern verification failed" not in reads.stdout + reads.stderr
    assert reads.stdout.count("read 1048576/1048576 bytes") == 4


def test_remount_reads_cached_image_without_fetching(mount, images, glance_clean, tmp_path):
    cache = tmp_path / "shared-cache"
    m = mount(cache_dir=cache, name="first")
    source = images["raw_path"].read_bytes()
    assert (m.image(images["raw"]) / "data").read_bytes() == source
    assert m.unmount() == 0
    glance_clean.reset()
    m2 = mount(cache_dir=cache, name="second")
    assert (m2.image(images["raw"]) / "data").read_bytes() == source
    fetched = glance_clean.stats()["data_bytes"]
    print(f"\nremount read of a cached {len(source)}-byte image fetched {fetched} bytes")
    assert fetched == 0


def test_store_that_refuses_ranges(mount, images, glance_clean, tmp_path):
    api = images["api"]
    data = random_bytes(5 * MiB + 77)
    image = make_image(api, ALICE, "norange", data=data)["id"]
    m = mount()
    glance_clean.faults(refuse_ranges=True)
    fd = os.open(m.image(image) / "data", os.O_RDONLY)
    try:
        assert os.pread(fd, 1000, 3 * MiB + 5) == data[3 * MiB + 5:3 * MiB + 1005]
        assert os.pread(fd, 10, 0) == data[:10]
    finally:
        os.close(fd)
    assert (m.image(image) / "data").read_bytes() == data


def test_outage_answers_eio_within_the_deadline_and_recovers(mount, images, glance_clean):
    m = mount()
    path = m.image(images["raw"]) / "data"
    source = images["raw_path"].read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == source[:100]
        glance_clean.faults(down=True)
        start = time.monotonic()
        with pytest.raises(OSError) as e:
            os.pread(fd, 100, 7 * MiB)
        took = time.monotonic() - start
        assert e.value.errno == errno.EIO
        print(f"\nbackend outage to EIO: {took:.2f}s")
        assert took < 8.5  # retried until the deadline (8 s), not past it
        assert os.pread(fd, 100, 0) == source[:100]  # cached: still served
        glance_clean.faults()
        time.sleep(FAILURE_GRACE)  # the failure answers the kernel's immediate re-read
        assert os.pread(fd, 100, 7 * MiB) == source[7 * MiB:7 * MiB + 100]
    finally:
        os.close(fd)
    assert "EIO" in m.output()


def test_image_deleted_while_mounted(mount, images, glance_clean):
    api = images["api"]
    data = random_bytes(4 * MiB)
    image = make_image(api, ALICE, "deleted", data=data)["id"]
    m = mount()
    fd = os.open(m.image(image) / "data", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == data[:100]  # the first block is now cached
        api.delete(ALICE, image)
        time.sleep(1.5)  # past the mount's TTLs (1 s here)
        with pytest.raises(FileNotFoundError):
            os.stat(m.image(image))
        assert image not in os.listdir(m.path)
        assert os.pread(fd, 100, 0) == data[:100]  # cached: still served
        with pytest.raises(OSError) as e:
            os.pread(fd, 100, 3 * MiB)  # not cached: the image is gone
        assert e.value.errno in (errno.ESTALE, errno.EIO)
    finally:
        os.close(fd)


def test_writes_are_refused_and_missing_ids_are_enoent(mount, images):
    m = mount()
    image_dir = m.image(images["raw"])
    attempts = [lambda: open(image_dir / "data", "r+b"), lambda: open(m.path / "new", "wb"),
                lambda: os.mkdir(m.path / "d"), lambda: os.unlink(image_dir / "data"),
                lambda: os.rename(image_dir / "data", image_dir / "x"),
                lambda: os.chmod(image_dir / "data", 0o777),
                lambda: open(image_dir / "metadata.json", "a")]
    for attempt in attempts:
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    assert (image_dir / "data").stat().st_size == images["raw_path"].stat().st_size
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / "00000000-0000-4000-8000-000000000000")


def test_sigterm_unmounts_cleanly(glance_clean, tmp_path):
    m = Mount(tmp_path / "mnt", tmp_path / "cache",
              {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url})
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(timeout=30) == 0, m.output()
    assert not os.path.ismount(m.path)


def test_daemon_mode_second_mount_refused_and_umount(glance_clean, tmp_path):
    env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url}
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    proc = imagefs("mount", str(mnt), "--cache-dir", str(cache), env=env)
    assert proc.returncode == 0, proc.stderr
    try:
        assert os.path.ismount(mnt)  # ready when the command returned
        other = tmp_path / "other"
        other.mkdir()
        second = imagefs("mount", str(other), "--cache-dir", str(cache), env=env)
        assert second.returncode == 2 and "in use by another imagefs mount" in second.stderr
        assert not os.path.ismount(other)
    finally:
        pid = int((cache / "lock").read_text())
        done = imagefs("umount", str(mnt))
    assert done.returncode == 0, done.stderr
    assert not os.path.ismount(mnt)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the daemon did not exit after umount")
    log = (cache / "imagefs.log").read_text()
    assert "unmounted" in log and "Traceback" not in log


def test_mount_with_a_bad_token_fails_with_the_reason(glance_clean, tmp_path):
    (tmp_path / "mnt").mkdir()
    proc = imagefs("mount", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "c"),
                   env={"OS_AUTH_TOKEN": "nope", "OS_IMAGE_URL": glance_clean.url})
    assert proc.returncode == 1 and "authentication" in proc.stderr
    assert not os.path.ismount(tmp_path / "mnt")


def test_embedded_store_mount_and_qemu_img_info(tmp_path):
    store = tmp_path / "store"
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    created = imagefs("image", "create", "small", "--file", str(disk), "--disk-format", "qcow2",
                      "--container-format", "bare", "--store", str(store), "-f", "json")
    image_id = json.loads(created.stdout)["id"]
    m = Mount(tmp_path / "mnt", tmp_path / "cache", {}, "--store", str(store))
    try:
        info = subprocess.run(["qemu-img", "info", "--output=json",
                               str(m.image(image_id) / "data")],
                              capture_output=True, text=True, check=True)
        assert json.loads(info.stdout)["virtual-size"] == 1 << 30
    finally:
        assert m.unmount() == 0


def test_by_name_follows_to_the_newest_image_of_a_name(mount, images, glance_clean, tag):
    api = images["api"]
    make_image(api, ALICE, tag, data=b"older bytes", name=f"named-{tag}")
    time.sleep(1.1)  # created_at has whole seconds
    newer = make_image(api, ALICE, tag, data=b"newer bytes", name=f"named-{tag}")
    m = mount()
    link = m.path / "by-name" / f"named-{tag}"
    assert os.readlink(link) == f"../{newer['id']}"
    assert (link / "data").read_bytes() == b"newer bytes"
    assert f"named-{tag}" in os.listdir(m.path / "by-name")
    assert "by-name" in os.listdir(m.path)


def cached_by_image(cache_dir: Path) -> dict[str, int]:
    """Bytes of blocks in the cache directory by image id, read from its files."""
    from imagefs.cache.disk import DiskCache
    from imagefs.cache.inventory import read_cache

    return {i.id: i.cached_bytes for i in read_cache(cache_dir / "blocks", DiskCache.slots_in)}


def settled(cache_dir: Path) -> dict[str, int]:
    """``cached_by_image`` once the writer threads are done (no change for a second)."""
    last, since = None, time.monotonic()
    while time.monotonic() - since < 1.0:
        now = cached_by_image(cache_dir)
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.1)
    return last


def test_an_open_file_keeps_its_images_blocks_while_reading_another_evicts(
        mount, images, tmp_path, tag):
    api = images["api"]
    sizes = {"held": 20 * MiB, "other": 40 * MiB, "third": 24 * MiB}
    data = {k: random_bytes(n) for k, n in sizes.items()}
    ids = {k: make_image(api, ALICE, tag, data=d)["id"] for k, d in data.items()}
    cache = tmp_path / "small-cache"
    m = mount(cache_dir=cache, extra=("--cache-size", "40M", "--cache-min-free", "0"))
    fd = os.open(m.image(ids["held"]) / "data", os.O_RDONLY)
    try:
        assert os.pread(fd, sizes["held"], 0) == data["held"]
        assert settled(cache).get(ids["held"]) == sizes["held"]
        # 60 MiB through a 40 MiB cache: the other image evicts its own older groups.
        assert (m.image(ids["other"]) / "data").read_bytes() == data["other"]
        held = settled(cache)
        print(f"\nwhile open: {held}")
        assert held[ids["held"]] == sizes["held"]
        assert sum(held.values()) <= 40 * MiB
    finally:
        os.close(fd)
    # Closed: its groups are the least recently used, and go first.
    assert (m.image(ids["third"]) / "data").read_bytes() == data["third"]
    after = settled(cache)
    print(f"after close: {after}")
    assert after.get(ids["held"], 0) < sizes["held"]


def test_purge_on_unmount_removes_the_blocks_of_images_that_are_not_public(
        mount, images, tmp_path):
    from imagefs.cache.disk import DiskCache
    from imagefs.cache.inventory import read_cache

    cache = tmp_path / "purged-cache"
    m = mount(cache_dir=cache, extra=("--purge-on-unmount",))
    source = images["raw_path"].read_bytes()
    private, public = images["raw"], images["public"]  # alice's own, and admin's public
    for image in (private, public):
        assert (m.image(image) / "data").read_bytes() == source
    record = images["api"].get(ALICE, private)
    assert record["visibility"] != "public"
    assert set(cached_by_image(cache)) == {private, public}
    assert m.unmount() == 0, m.output()
    left = read_cache(cache / "blocks", DiskCache.slots_in)
    assert [(i.id, i.visibility) for i in left] == [(public, "public")]
    assert left[0].cached_bytes == len(source) + (-len(source)) % (256 << 10)  # whole blocks
    assert "--purge-on-unmount: removed the blocks of 1 image that is not public" \
        in m.output()
