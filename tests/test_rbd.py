"""Direct reads from Ceph RBD through real mounts, against the RBD-backed Glance.

Glance answers metadata and decides visibility; the data comes from the
OSDs through librbd with the host's read-only key.  Bytes are counted on the
servers' side: the Glance wrapper's ``data_bytes`` and the OSD's
``op_r_out_bytes``.  What each test measures is printed (``pytest -s``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import subprocess
import threading
import time
import uuid

import pytest
from conftest import ALICE, make_image, random_bytes
from test_mount import Mount

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver
from imagefs.sources.choose import DirectOptions, SourceChooser
from imagefs.sources.rbd import CephOptions

pytestmark = [pytest.mark.ceph, pytest.mark.glance, pytest.mark.mount]
MiB = 1 << 20


def osd_read_bytes(ceph) -> int:
    return ceph.perf_dump_osd()["osd"]["op_r_out_bytes"]


def ceph_args(ceph, user="imagefs", keyring=None):
    return ("--ceph-conf", str(ceph.conf_path), "--ceph-user", user,
            "--ceph-keyring", str(keyring or ceph.keyring(user)))


@pytest.fixture(scope="module")
def images(glance_rbd, tmp_path_factory):
    """A raw image and a sparse 20 GiB qcow2 in the RBD Glance, alice's, with sources."""
    work = tmp_path_factory.mktemp("rbd-sources")
    api = API(GlanceDriver(glance_rbd.url, timeout=60))
    raw = work / "raw.img"
    raw.write_bytes(random_bytes(24 * MiB + 12_345))
    qcow2 = work / "sparse.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "20G"], check=True)
    cmds = []
    for i, offset in enumerate([0, 5 << 30, 19 << 30] + [((i * 613 + 101) % 20000) << 20
                                                            for i in range(20)]):
        cmds += ["-c", f"write -q -P {hex(0x10 + i)} {offset} 1M"]
    subprocess.run(["qemu-io", "-f", "qcow2", *cmds, str(qcow2)], check=True)

    def upload(path, fmt):
        with open(path, "rb") as f:
            return make_image(api, ALICE, "rbd", data=f, disk_format=fmt)["id"]
    return {"raw": upload(raw, "raw"), "raw_path": raw, "raw_bytes": raw.read_bytes(),
            "qcow2": upload(qcow2, "qcow2"), "qcow2_path": qcow2, "api": api}


@pytest.fixture
def mounted(glance_rbd_clean, tmp_path):
    """mounted(*extra, name=...) -> a Mount of the RBD Glance as alice; checked at teardown."""
    mounts = []
    env = {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_rbd_clean.url}

    def make(*extra, name="mnt"):
        m = Mount(tmp_path / name, tmp_path / f"cache-{name}", env, *extra)
        mounts.append(m)
        return m
    yield make
    for m in mounts:
        assert m.unmount() == 0, m.output()
        assert "Traceback" not in m.output(), m.output()


def test_qemu_img_info_of_a_sparse_qcow2_reads_the_osd_and_nothing_from_glance(
        mounted, images, ceph, glance_rbd_clean):
    m = mounted(*ceph_args(ceph))
    data = m.image(images["qcow2"]) / "data"
    os.stat(data)
    glance_rbd_clean.reset()
    before = osd_read_bytes(ceph)
    start = time.monotonic()
    info = subprocess.run(["qemu-img", "info", "--output=json", str(data)],
                          capture_output=True, text=True, check=True)
    took = time.monotonic() - start
    osd = osd_read_bytes(ceph) - before
    sent = glance_rbd_clean.stats()["data_bytes"]
    assert json.loads(info.stdout)["virtual-size"] == 20 << 30
    print(f"\nqemu-img info, 20 GiB sparse qcow2 in RBD: Glance sent {sent} data bytes, "
          f"the OSD read {osd} bytes, {took:.3f} s")
    assert sent == 0
    assert osd <= 2 * MiB
    assert f"image {images['qcow2']}: data from rbd" in m.output()


def test_the_mount_connects_to_ceph_before_the_first_read(mounted, images, ceph):
    m = mounted(*ceph_args(ceph))
    deadline = time.monotonic() + 10
    while "connected to Ceph cluster" not in m.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"connected to Ceph cluster {ceph.fsid} as client.imagefs" in m.output()
    start = time.monotonic()
    with open(m.image(images["raw"]) / "data", "rb") as f:
        assert f.read(100) == images["raw_bytes"][:100]
    print(f"\nfirst read of a fresh mount, connected already: {time.monotonic() - start:.3f} s")


def test_random_preads_cp_and_qemu_img_compare_are_byte_exact_from_rbd(
        mounted, images, ceph, glance_rbd_clean, tmp_path):
    m = mounted(*ceph_args(ceph))
    source = images["raw_bytes"]
    size = len(source)
    fd = os.open(m.image(images["raw"]) / "data", os.O_RDONLY)
    try:
        rng = random.Random(17)
        cases = [(0, 1), (MiB - 1, 2), (size - 1, 1), (size - MiB - 3, MiB + 3),
                 (size - 100, 500), (size, 10), (4 * MiB - 5, 3 * MiB)]
        cases += [(rng.randrange(size), rng.randrange(1, 3 * MiB + 1))
                  for _ in range(300 - len(cases))]
        for offset, length in cases:
            assert os.pread(fd, length, offset) == source[offset:offset + length], \
                (offset, length)
    finally:
        os.close(fd)
    subprocess.run(["cp", str(m.image(images["raw"]) / "data"), str(tmp_path / "copy")],
                   check=True)
    assert (tmp_path / "copy").read_bytes() == source
    subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
                    str(m.image(images["qcow2"]) / "data"), str(images["qcow2_path"])],
                   check=True, capture_output=True)
    assert glance_rbd_clean.stats()["data_bytes"] == 0
    metadata = json.loads((m.image(images["raw"]) / "metadata.json").read_text())
    assert "locations" not in metadata and "direct_url" not in metadata
    assert "rbd://" not in json.dumps(metadata)


def test_four_hosts_read_one_image_at_once_from_the_osds_not_glance(
        mounted, images, ceph, glance_rbd_clean, tmp_path):
    mounts = [mounted(*ceph_args(ceph), name=f"host{i}") for i in range(4)]
    source = images["raw_bytes"]
    glance_rbd_clean.reset()
    before = osd_read_bytes(ceph)
    results = {}

    def read(i):
        with open(mounts[i].image(images["raw"]) / "data", "rb") as f:
            results[i] = f.read()
    threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    took = time.monotonic() - start
    osd = osd_read_bytes(ceph) - before
    sent = glance_rbd_clean.stats()["data_bytes"]
    assert all(results.get(i) == source for i in range(4))
    print(f"\n4 hosts read a {len(source) / MiB:.1f} MiB image at once in {took:.2f} s: "
          f"Glance sent {sent} data bytes, the OSD read {osd / MiB:.1f} MiB")
    assert sent == 0


def test_without_ceph_credentials_reads_fall_back_to_one_glance_stream(
        mounted, images, ceph, glance_rbd_clean, tmp_path):
    empty = tmp_path / "empty.keyring"
    empty.write_text("")
    m = mounted(*ceph_args(ceph, keyring=empty))
    source, size = images["raw_bytes"], len(images["raw_bytes"])
    glance_rbd_clean.reset()
    fd = os.open(m.image(images["raw"]) / "data", os.O_RDONLY)
    try:
        rng = random.Random(5)
        for _ in range(100):
            offset = rng.randrange(size - MiB)
            assert os.pread(fd, MiB, offset) == source[offset:offset + MiB]
    finally:
        os.close(fd)
    sent = glance_rbd_clean.stats()["data_bytes"]
    print(f"\nno Ceph credentials: 100 random 1 MiB reads, Glance sent {sent / MiB:.1f} MiB "
          f"for a {size / MiB:.1f} MiB image")
    assert sent <= size
    reasons = [line for line in m.output().splitlines()
               if "reading through the image service" in line]
    assert len(reasons) == 1 and "cannot connect to Ceph" in reasons[0], m.output()


def test_a_key_without_read_access_falls_back_with_the_reason(
        mounted, images, ceph, glance_rbd_clean, tmp_path):
    user = f"noaccess{uuid.uuid4().hex[:6]}"
    keyring = tmp_path / f"client.{user}.keyring"
    keyring.write_text(ceph.ceph("auth", "get-or-create", f"client.{user}", "mon",
                                 "profile rbd", "osd", "profile rbd pool=elsewhere"))
    m = mounted(*ceph_args(ceph, user=user, keyring=keyring))
    source = images["raw_bytes"]
    assert (m.image(images["raw"]) / "data").read_bytes() == source
    assert glance_rbd_clean.stats()["data_bytes"] >= len(source)
    reasons = [line for line in m.output().splitlines()
               if "reading through the image service" in line]
    print(f"\na key without read access: {reasons}")
    assert len(reasons) == 1 and "permission" in reasons[0]


def test_an_image_in_another_cluster_is_read_through_glance(images, ceph, glance_rbd, caplog):
    def locations(image_id):  # as a Glance of another cluster would give them
        return [{"url": f"rbd://{uuid.uuid4()}/images/{image_id}/snap"}]

    chooser = SourceChooser(lambda image_id: "the service's source", locations, DirectOptions(
        ceph=CephOptions(str(ceph.conf_path), "imagefs", str(ceph.keyring("imagefs")))))
    try:
        with caplog.at_level(logging.WARNING):
            assert chooser.open(images["raw"], 100) == "the service's source"
    finally:
        chooser.close()
    assert f"the Ceph configuration reaches {ceph.fsid}" in caplog.text


def test_a_deleted_snapshot_fails_reads_with_an_errno_never_wrong_bytes(
        mounted, ceph, glance_rbd_clean):
    api = API(GlanceDriver(glance_rbd_clean.url, timeout=60))
    data = random_bytes(12 * MiB)
    image_id = make_image(api, ALICE, "rbd-snap", data=data)["id"]
    m = mounted(*ceph_args(ceph), "--read-deadline", "5")
    fd = os.open(m.image(image_id) / "data", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == data[:100]  # the snapshot is open, block 0 cached
        admin = ("-c", str(ceph.conf_path), "--id", "admin", "--keyring",
                 str(ceph.admin_keyring))
        for action in ("unprotect", "rm"):
            subprocess.run(["rbd", *admin, "snap", action, f"images/{image_id}@snap"],
                           check=True, capture_output=True)
        # The open snapshot may serve until the OSD trims it: the exact bytes, or an errno.
        for offset in (4 * MiB + 7, 9 * MiB):
            try:
                assert os.pread(fd, 100, offset) == data[offset:offset + 100]
            except OSError as exc:
                assert exc.errno in (errno.EIO, errno.ESTALE)
        assert os.pread(fd, 100, 0) == data[:100]  # cached bytes still serve
    finally:
        os.close(fd)
    # A host that opens it now: librbd cannot, Glance cannot either.
    fresh = mounted(*ceph_args(ceph), "--read-deadline", "5", name="fresh")
    start = time.monotonic()
    with pytest.raises(OSError) as e:
        with open(fresh.image(image_id) / "data", "rb") as f:
            f.read(100)
    took = time.monotonic() - start
    print(f"\na deleted snapshot, newly opened: {errno.errorcode[e.value.errno]} after "
          f"{took:.2f} s")
    assert e.value.errno in (errno.EIO, errno.ESTALE)
    reasons = [line for line in fresh.output().splitlines()
               if "reading through the image service" in line]
    assert len(reasons) == 1 and "image not found" in reasons[0], fresh.output()


def test_image_download_reads_rbd_directly_and_verifies(images, ceph, glance_rbd_clean,
                                                         tmp_path):
    from test_mount import imagefs

    out = tmp_path / "image.raw"
    glance_rbd_clean.reset()
    before = osd_read_bytes(ceph)
    proc = imagefs("image", "download", images["raw"], "--file", str(out), *ceph_args(ceph),
                   env={"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_rbd_clean.url})
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == images["raw_bytes"]
    assert glance_rbd_clean.stats()["data_bytes"] == 0
    assert osd_read_bytes(ceph) - before >= len(images["raw_bytes"])


def test_a_stream_reads_only_its_range_and_a_closed_one_waits_for_its_reads(images, ceph):
    from imagefs.sources import rbd as rbd_source

    cluster = rbd_source.RbdCluster(CephOptions(str(ceph.conf_path), "imagefs",
                                                str(ceph.keyring("imagefs"))))
    source_bytes = images["raw_bytes"]
    try:
        source = cluster.open(rbd_source.RbdLocation(ceph.fsid, "images", images["raw"], "snap"),
                              len(source_bytes))
        start, end = 3 * MiB + 5, 20 * MiB - 7
        before = osd_read_bytes(ceph)
        pieces = list(source.stream(start, end))
        assert b"".join(pieces) == source_bytes[start:end]
        assert [len(p) for p in pieces[:2]] == [MiB - 5, MiB]  # aligned to the piece size
        slack = 64 << 10  # the image's header and metadata, read now and then
        assert end - start <= osd_read_bytes(ceph) - before <= end - start + slack
        assert b"".join(source.stream(len(source_bytes) - 100)) == source_bytes[-100:]
        # Closed after its first piece: the reads in flight end with it, inside the range.
        before = osd_read_bytes(ceph)
        chunks = source.stream(0, 6 * MiB)
        assert next(chunks) == source_bytes[:MiB]
        chunks.close()
        read = osd_read_bytes(ceph) - before
        time.sleep(0.5)
        assert MiB <= read <= 6 * MiB + slack
        assert osd_read_bytes(ceph) - before <= read + slack  # no read outlived the stream
        source.close()
    finally:
        cluster.close()
