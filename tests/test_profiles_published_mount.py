"""Published boot profiles through real mounts: hosts with no shared directory.

A "boot" is test_profiles_mount.py's: fixed scattered reads of ``data`` through
the kernel.  Each host has a cache of its own and no ``--profile-dir`` in
common: the only thing the hosts share is the image service.  The real guest's
boots are in test_profiles_published_boot.py.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import subprocess
import uuid

import pytest
from conftest import ALICE, make_image
from test_mount import Mount

#: The test Mount does not publish unless asked.
PUBLISH = "--publish-profiles"
from test_profiles_mount import SIZE, boot, env, imagefs, status, wait_for_replay

from imagefs.api import API
from imagefs.context import RequestContext
from imagefs.drivers.glance import GlanceDriver
from imagefs.drivers.local import LocalDriver
from imagefs.profiles import Profile
from imagefs.profiles_published import MAX_PROFILE_BYTES, PROP_OF, PROP_VERSION, TAG

pytestmark = [pytest.mark.mount, pytest.mark.glance]


@pytest.fixture
def image(glance):
    data = random.Random(11).randbytes(SIZE)
    api = API(GlanceDriver(glance.url))
    return make_image(api, ALICE, uuid.uuid4().hex, data=data, name="fleet")["id"], data


def test_hosts_with_no_shared_directory_boot_from_the_first_hosts_published_profile(
        glance, image, tmp_path):
    image_id, data = image
    first = Mount(tmp_path / "host1", tmp_path / "cache1", env(glance), PUBLISH)
    try:
        boot(first, image_id, data)
    finally:
        assert first.unmount() == 0, first.output()
    assert "boot profile published as image" in first.output()
    listed = imagefs("profile", "list", "--cache-dir", str(tmp_path / "cache2"),
                     env={**os.environ, **env(glance)})
    assert listed.returncode == 0, listed.stderr
    assert image_id in listed.stdout and "published" in listed.stdout

    glance.reset()
    hosts = [Mount(tmp_path / f"host{i}", tmp_path / f"cache{i}", env(glance), PUBLISH)
             for i in (2, 3, 4)]
    try:
        for m in hosts:  # qemu-img create opens the backing file before the boot
            os.close(os.open(m.image(image_id) / "data", os.O_RDONLY))
        replays = [wait_for_replay(m, image_id) for m in hosts]
        prefetched = glance.stats()["data_bytes"]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda m: boot(m, image_id, data), hosts))
        during = glance.stats()["data_bytes"] - prefetched
        origins = {i["id"]: i["profile_replay"]["origin"] for i in status(hosts[0])["images"]
                   if i.get("profile_replay")}
    finally:
        for m in hosts:
            assert m.unmount() == 0, m.output()
    print(f"\nhosts 2-4: replays {replays}; Glance sent {prefetched} before the boots "
          f"and {during} during them")
    assert all(r["failed"] == 0 and r["fetched"] > 0 for r in replays)
    assert origins[image_id].startswith("published ")
    assert during == 0
    for m in hosts:
        assert "Traceback" not in m.output()
    shown = imagefs("profile", "show", image_id, "--cache-dir", str(tmp_path / "cache1"),
                    env={**os.environ, **env(glance)})
    assert shown.returncode == 0 and shown.stdout.count("| image ") == 2  # local, published
    gone = imagefs("profile", "delete", image_id, "--cache-dir", str(tmp_path / "cache1"),
                   env={**os.environ, **env(glance)})
    assert gone.returncode == 0, gone.stderr
    assert "1 local and 1 published" in gone.stdout  # hosts 2-4 merged theirs into one
    left = imagefs("profile", "show", image_id, "--cache-dir", str(tmp_path / "cache1"),
                   env={**os.environ, **env(glance)})
    assert left.returncode != 0 and "no boot profile" in left.stderr


def test_a_listing_costs_no_lookups_and_an_open_one_remembered_miss(glance, tmp_path):
    api = API(GlanceDriver(glance.url))
    tag = uuid.uuid4().hex
    ids = [make_image(api, ALICE, tag, data=b"x" * 4096, name=f"many-{tag[:6]}-{i}")["id"]
           for i in range(30)]
    m = Mount(tmp_path / "mnt", tmp_path / "cache", env(glance), PUBLISH)
    try:
        subprocess.run(["ls", "-l", str(m.path)], check=True, capture_output=True)
        for image_id in ids:
            subprocess.run(["ls", "-l", str(m.image(image_id))], check=True,
                           capture_output=True)
        assert m.output().count("looked for a published boot profile") == 0
        for _ in range(3):
            with open(m.image(ids[0]) / "data", "rb") as f:
                assert f.read() == b"x" * 4096
        lookups = m.output().count("looked for a published boot profile")
    finally:
        assert m.unmount() == 0, m.output()
    assert lookups == 1, m.output()


def test_damaged_oversized_and_foreign_profiles_are_ignored_with_one_warning_each(tmp_path):
    store = tmp_path / "store"
    api = API(LocalDriver(store))
    ours, theirs = RequestContext.local_admin(), RequestContext(user_id="eve", project_id="eve")
    data = random.Random(5).randbytes(SIZE)
    record = api.create(ours, {"name": "trusted", "disk_format": "raw",
                               "container_format": "bare"}, data=data)
    image_id = record["id"]
    version = record["os_hash_value"]

    def publish(ctx, body: bytes):
        api.create(ctx, {"name": "p", "disk_format": "raw", "container_format": "bare",
                         "visibility": "private", "os_hidden": True, "tags": [TAG],
                         "properties": {PROP_OF: image_id, PROP_VERSION: version}},
                   data=body)
    everything = Profile(image_id, version, SIZE, [(0, SIZE // 2 - 4096, 0)]).to_json()
    publish(ours, everything.encode()[:-30])  # damaged
    publish(ours, b" " * (MAX_PROFILE_BYTES + 1))  # oversized
    publish(theirs, Profile(image_id, version, SIZE, [(0, 1 << 20, 0)]).to_json().encode())
    m = Mount(tmp_path / "mnt", tmp_path / "cache", {}, "--store", str(store), PUBLISH)
    try:
        for _ in range(2):
            boot(m, image_id, data)  # the bytes are right, whatever was published
        reports = status_of(m, image_id)
    finally:
        assert m.unmount() == 0, m.output()
    warned = [line for line in m.output().splitlines()
              if "WARNING" in line and "ignored" in line]
    assert len(warned) == 3, m.output()
    assert sum("damaged" in w for w in warned) == 1
    assert sum(f"over {MAX_PROFILE_BYTES}" in w for w in warned) == 1
    assert sum("belongs to project eve" in w for w in warned) == 1
    assert reports is None  # no profile replayed
    assert "Traceback" not in m.output()


def status_of(m: Mount, image_id: str):
    return next((i.get("profile_replay") for i in status(m)["images"]
                 if i["id"] == image_id), None)

