"""Published boot profiles (``imagefs.profiles_published``) against both drivers:
the embedded store and the real Glance.

Each test profiles an image id of its own (a fresh UUID), so tests sharing the
session's Glance never see each other's profiles.
"""

from __future__ import annotations

import logging
import threading
import uuid

import pytest
from conftest import ADMIN, ALICE, BOB

from imagefs.errors import ImageNotAuthorized
from imagefs.profiles import MAX_SHARE, Profile, ProfileStore
from imagefs.profiles_published import (
    MAX_PROFILE_BYTES,
    PROP_OF,
    PROP_VERSION,
    TAG,
    ProfileStores,
    PublishedProfiles,
)

SIZE = 100 << 20


@pytest.fixture
def image_id():
    return str(uuid.uuid4())


def profile(image_id, ranges, version="v1", size=SIZE):
    return Profile(image_id, version, size, ranges)


def warnings(caplog):
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


def publish_raw(backend, ctx, image_id, data: bytes, version="v1", **info):
    """A profile image made by hand (damaged, foreign ...)."""
    info = {"name": "p", "disk_format": "raw", "container_format": "bare",
            "visibility": "private", "os_hidden": True, "tags": [TAG],
            "properties": {PROP_OF: image_id, PROP_VERSION: version}, **info}
    return backend.api.create(ctx, info, data=data)


def test_a_published_profile_is_a_hidden_image_another_host_finds(backend, image_id):
    host1 = PublishedProfiles(backend.api, ALICE)
    host1.save(profile(image_id, [(0, 4096, 0), (1 << 20, 8192, 50)]))
    [record] = host1.records(image_id)
    assert record["os_hidden"] and record["visibility"] == "private"
    assert TAG in record["tags"] and record["owner"] == ALICE.project_id
    assert record["properties"][PROP_OF] == image_id
    # not in a listing of images, as hidden images are not
    assert record["id"] not in {r["id"] for r in backend.api.get_all(ALICE)}
    host2 = PublishedProfiles(backend.api, ALICE)
    found = host2.load(image_id, "v1")
    assert found.ranges == [(0, 4096, 0), (1 << 20, 8192, 50)]
    assert found.origin == f"published {record['id']}"
    assert host2.load(image_id, "v2") is None  # another version's bytes: none


def test_a_later_boot_merges_into_the_published_profile_and_the_old_one_goes(backend,
                                                                                image_id):
    host1, host2 = PublishedProfiles(backend.api, ALICE), PublishedProfiles(backend.api, ALICE)
    host1.save(profile(image_id, [(0, 4096, 0)]))
    [first] = host1.records(image_id)
    host2.save(profile(image_id, [(65536, 4096, 10)]))
    [second] = host2.records(image_id)
    assert second["id"] != first["id"]
    merged = PublishedProfiles(backend.api, ALICE).load(image_id, "v1")
    assert sorted(merged.ranges) == [(0, 4096, 0), (65536, 4096, 10)] and merged.boots == 2


class _Meeting:
    """An API whose ``create`` waits until both publishers have read what is published;
    then one publisher writes (creates, deletes) at a time (``writing``, released by
    the test when its publish is over): the test Glance's sqlite may refuse two
    concurrent writes."""

    def __init__(self, api, barrier, writing):
        self._api, self._barrier, self._writing = api, barrier, writing

    def create(self, *args, **kwargs):
        self._barrier.wait(timeout=30)
        self._writing.acquire()
        return self._api.create(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._api, name)


def test_two_hosts_publishing_at_once_lose_nothing(backend, image_id):
    PublishedProfiles(backend.api, ALICE).save(profile(image_id, [(0, 4096, 0)]))
    barrier, writing = threading.Barrier(2), threading.Lock()
    hosts = [PublishedProfiles(_Meeting(backend.api, barrier, writing), ALICE)
             for _ in range(2)]
    errors = []

    def publish(host, offset):
        try:
            host.save(profile(image_id, [(offset, 4096, 5)]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            writing.release()
    threads = [threading.Thread(target=publish, args=(h, (i + 1) << 20))
               for i, h in enumerate(hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    # each created a superset of what both read, and deleted only that: two remain
    assert len(PublishedProfiles(backend.api, ALICE).records(image_id)) == 2
    found = PublishedProfiles(backend.api, ALICE).load(image_id, "v1")
    assert {r[0] for r in found.ranges} == {0, 1 << 20, 2 << 20}
    # the next publish folds them into one
    PublishedProfiles(backend.api, ALICE).save(profile(image_id, [(3 << 20, 4096, 9)]))
    assert len(PublishedProfiles(backend.api, ALICE).records(image_id)) == 1
    found = PublishedProfiles(backend.api, ALICE).load(image_id, "v1")
    assert {r[0] for r in found.ranges} == {0, 1 << 20, 2 << 20, 3 << 20}


def test_a_miss_is_remembered_for_a_while(backend, image_id):
    now = [0.0]
    host = PublishedProfiles(backend.api, ALICE, miss_ttl=60, clock=lambda: now[0])
    assert host.load(image_id, "v1") is None and host.lookups == 1
    assert host.load(image_id, "v1") is None and host.lookups == 1
    PublishedProfiles(backend.api, ALICE).save(profile(image_id, [(0, 4096, 0)]))
    now[0] = 59
    assert host.load(image_id, "v1") is None and host.lookups == 1
    now[0] = 61
    assert host.load(image_id, "v1") is not None and host.lookups == 2


def test_damaged_oversized_greedy_and_foreign_profiles_are_ignored_with_one_warning_each(
        backend, image_id, caplog):
    good = [(0, 4096, 0)]
    PublishedProfiles(backend.api, ADMIN).save(profile(image_id, good))
    publish_raw(backend, ADMIN, image_id, b'{"imagefs_profile": 1, "ranges": [[0')
    publish_raw(backend, ADMIN, image_id, b" " * (MAX_PROFILE_BYTES + 1))
    greedy = profile(image_id, [(0, int(MAX_SHARE * SIZE) + 4096, 0)])
    publish_raw(backend, ADMIN, image_id, greedy.to_json().encode())
    past_end = profile(image_id, [(SIZE - 10, 4096, 0)])
    publish_raw(backend, ADMIN, image_id, past_end.to_json().encode())
    # another project's, visible to the admin mount
    publish_raw(backend, BOB, image_id, profile(image_id, [(8 << 20, 4096, 0)]).to_json()
                .encode())
    host = PublishedProfiles(backend.api, ADMIN)
    with caplog.at_level(logging.WARNING):
        assert host.load(image_id, "v1").ranges == good
        host._misses.clear()
        assert host.load(image_id, "v1").ranges == good
    messages = [r.getMessage() for r in warnings(caplog)]
    assert len(messages) == 5, messages
    for why in ("damaged", f"over {MAX_PROFILE_BYTES}", "would fetch", "past the image's end",
                f"belongs to project {BOB.project_id}"):
        assert sum(why in m for m in messages) == 1, (why, messages)


def test_credentials_that_cannot_create_images_turn_publishing_off_finding_goes_on(
        backend, image_id, caplog):
    PublishedProfiles(backend.api, ALICE).save(profile(image_id, [(0, 4096, 0)]))

    class ReadOnly:
        def __init__(self, api):
            self._api, self.creates = api, 0

        def create(self, *args, **kwargs):
            self.creates += 1
            raise ImageNotAuthorized("403 Forbidden: you may not create images", 403)

        def __getattr__(self, name):
            return getattr(self._api, name)
    api = ReadOnly(backend.api)
    host = PublishedProfiles(api, ALICE)
    with caplog.at_level(logging.WARNING):
        host.save(profile(image_id, [(4096, 4096, 1)]))
        host.save(profile(image_id, [(8192, 4096, 2)]))
    assert api.creates == 1 and not host.publishing
    assert len(warnings(caplog)) == 1 and "not be published" in warnings(caplog)[0].getMessage()
    assert host.load(image_id, "v1").ranges == [(0, 4096, 0)]


def test_the_local_directory_goes_first_and_a_save_goes_to_both(backend, image_id, tmp_path):
    stores = ProfileStores(ProfileStore(tmp_path / "p"), PublishedProfiles(backend.api, ALICE))
    assert stores.load(image_id, "v1") is None
    stores.save(profile(image_id, [(0, 4096, 0)]))
    assert stores.load(image_id, "v1").origin == "local"
    # a fresh host: no local profile, the published one
    fresh = ProfileStores(ProfileStore(tmp_path / "q"), PublishedProfiles(backend.api, ALICE))
    assert fresh.load(image_id, "v1").origin.startswith("published ")
    assert [p.origin.split()[0] for p in fresh.find(image_id)] == ["published"]
    assert fresh.published.delete(image_id) == 1
    assert fresh.load(image_id, "v1") is None
    off = ProfileStores(ProfileStore(tmp_path / "r"), None)
    off.save(profile(image_id, [(0, 4096, 0)]))
    assert PublishedProfiles(backend.api, ALICE).records(image_id) == []


def test_an_open_after_a_miss_looks_again_and_a_profile_of_another_size_is_not_replayed(
        caplog):
    import types

    import trio

    from imagefs.blocks import ImageRef
    from imagefs.profiles import BootProfiles

    image = ImageRef(str(uuid.uuid4()), "v1", SIZE)
    answers = [None, profile(image.id, [(0, 4096, 0)], size=SIZE + 1),
               profile(image.id, [(0, 4096, 0)])]
    loads, warmed = [], []

    class Store:
        root = "nowhere"

        def load(self, image_id, version):
            loads.append((image_id, version))
            return answers[len(loads) - 1]

    async def warm(ref, ranges, progress, in_memory):
        warmed.append(ranges)
        return {"blocks": 1, "cached": 0, "fetched": 4096, "failed": 0}
    blocks = types.SimpleNamespace(block_size=4096, keep_last=lambda *a: None, warm=warm)

    async def main():
        async with trio.open_nursery() as nursery:
            profiles = BootProfiles(Store(), blocks, 0, nursery)
            for _ in range(4):
                profiles.opened(image)
                await trio.sleep(0.1)  # the load runs in a thread
            nursery.cancel_scope.cancel()
        return profiles
    with caplog.at_level(logging.WARNING):
        profiles = trio.run(main)
    assert len(loads) == 3  # a miss, a profile of other bytes, then the profile: replayed
    assert warmed == [[(0, 4096)]] and profiles.replays[image.id]["origin"] == "local"
    assert len(warnings(caplog)) == 1 and "of 104857601 bytes" in warnings(caplog)[0].getMessage()
