"""The Ceph test infrastructure: a real cluster, and a Glance storing on RBD there.

One image of random bytes is uploaded to the RBD Glance; each test checks
one thing later work relies on: the record, the ``direct_url`` a host uses
to find the image in the cluster, Glance refusing ranges on this store, the
bytes through Glance, and the bytes through librbd with the read-only key,
counted at the OSD.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest
from conftest import ALICE, FAST_RETRY, make_image, random_bytes

from imagefs import errors
from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver

pytestmark = [pytest.mark.ceph, pytest.mark.glance]

#: Not a whole number of Glance's 4 MiB chunks, nor of RBD's 4 MiB objects.
SIZE = 6 * 2**20 + 12345


@pytest.fixture(scope="module")
def image(glance_rbd):
    """(record, bytes) of one image in the RBD Glance, uploaded by alice."""
    data = random_bytes(SIZE)
    api = API(GlanceDriver(glance_rbd.url, timeout=30), retry=FAST_RETRY)
    record = make_image(api, ALICE, uuid.uuid4().hex, data=data)
    return record, data


def _http(url: str, headers: dict | None = None):
    req = urllib.request.Request(url, headers={"X-Auth-Token": ALICE.auth_token,
                                               **(headers or {})})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, resp.read()


def _rbd(ceph, user: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["rbd", "-c", str(ceph.conf_path), "--id", user,
                           "--keyring", str(ceph.keyring(user)), *args],
                          capture_output=True, timeout=120, **kw)


def test_cluster_is_up_with_its_daemons(ceph):
    rss = {name: ceph.rss_bytes(name) for name in ("mon.a", "osd.0")}
    print(f"\nceph: ready {ceph.start_seconds:.1f} s after start(); "
          + ", ".join(f"{n} {b / 2**20:.0f} MiB RSS" for n, b in rss.items())
          + f"; {ceph.health()}")
    assert ceph.ceph_json("osd", "pool", "application", "get", ceph.pool) == {"rbd": {}}


def test_get_returns_the_uploaded_record(glance_rbd_clean, image):
    record, data = image
    api = API(GlanceDriver(glance_rbd_clean.url, timeout=30), retry=FAST_RETRY)
    got = api.get(ALICE, record["id"])
    assert (got["id"], got["status"], got["size"]) == (record["id"], "active", SIZE)


def test_direct_url_names_the_cluster_pool_and_snapshot(glance_rbd_clean, ceph, image):
    record, _ = image
    status, body = _http(f"{glance_rbd_clean.url}/v2/images/{record['id']}")
    assert status == 200
    assert json.loads(body)["direct_url"] == f"rbd://{ceph.fsid}/{ceph.pool}/{record['id']}/snap"


def test_glance_refuses_ranges_on_rbd(glance_rbd_clean, image):
    record, data = image
    with pytest.raises(urllib.error.HTTPError) as refused:
        _http(f"{glance_rbd_clean.url}/v2/images/{record['id']}/file",
              {"Range": "bytes=1000-1999"})
    assert refused.value.code == 400
    driver = GlanceDriver(glance_rbd_clean.url, timeout=30)
    with pytest.raises(errors.RangesRefused):
        driver.read(ALICE, record["id"], 1000, 1000)
    # The API falls back to one stream from the start, skipped forward.
    api = API(driver, retry=FAST_RETRY)
    assert api.read(ALICE, record["id"], 5 * 2**20, 1000) == data[5 * 2**20:5 * 2**20 + 1000]


def test_whole_image_get_returns_the_bytes(glance_rbd_clean, image):
    record, data = image
    status, body = _http(f"{glance_rbd_clean.url}/v2/images/{record['id']}/file")
    assert status == 200 and body == data
    assert glance_rbd_clean.stats()["data_bytes"] == SIZE


def test_read_only_key_exports_the_bytes_counted_at_the_osd(ceph, image):
    record, data = image
    before = ceph.perf_dump_osd()["osd"]["op_r_out_bytes"]
    export = _rbd(ceph, "imagefs", "export", f"{ceph.pool}/{record['id']}@snap", "-")
    after = ceph.perf_dump_osd()["osd"]["op_r_out_bytes"]
    assert export.returncode == 0, export.stderr.decode()
    assert export.stdout == data
    print(f"\nosd op_r_out_bytes: +{after - before} for an export of {SIZE}; "
          f"osd.0 {ceph.rss_bytes('osd.0') / 2**20:.0f} MiB RSS holding the image")
    assert after - before >= SIZE


def test_read_only_key_cannot_write(ceph, image):
    record, _ = image
    name = f"{ceph.pool}/written-{record['id'][:8]}"
    refused = _rbd(ceph, "imagefs", "create", name, "--size", "1M")
    assert refused.returncode != 0
    assert b"Operation not permitted" in refused.stderr, refused.stderr.decode()
    snap = _rbd(ceph, "imagefs", "snap", "create", f"{ceph.pool}/{record['id']}@other")
    assert snap.returncode != 0
    # The same command with Glance's key works: the refusal is the key's caps.
    assert _rbd(ceph, "glance", "create", name, "--size", "1M").returncode == 0
    assert _rbd(ceph, "glance", "rm", name).returncode == 0
