"""Boot profiles and warm-ups, below the mount: the profile file, its merges, and
``BlockReader.warm`` against the fault-injecting source on trio's MockClock."""

from __future__ import annotations

import json
import logging

import trio
from fake_source import FakeSource
from test_blocks import BS, data_of, run

from imagefs.blocks import ImageRef
from imagefs.profiles import MAX_RANGES, Profile, ProfileStore

IMAGE = ImageRef("11111111-2222-3333-4444-555555555555", "v1", 100 * BS + 5)


def test_blocks_become_ranges_in_the_order_of_first_touch():
    touched = {7: 0.5, 8: 0.6, 9: 0.7, 2: 0.1, 100: 2.0}
    profile = Profile.of_blocks(IMAGE, BS, touched, 120)
    # 2 first, then 7-9 as one range; the last block is 5 bytes long
    assert profile.ranges == [(2 * BS, BS, 100), (7 * BS, 3 * BS, 500), (100 * BS, 5, 2000)]
    assert profile.bytes == 4 * BS + 5 and profile.covered_s == 2.0


def test_a_merge_keeps_every_byte_once_with_its_earliest_touch():
    a = Profile(IMAGE.id, "v1", IMAGE.size, [(0, 100, 10), (500, 100, 20)])
    b = Profile(IMAGE.id, "v1", IMAGE.size, [(50, 100, 5), (1000, 10, 30)])
    m = a.merged(b)
    assert sorted((o, o + n) for o, n, _ in m.ranges) == \
        [(0, 50), (50, 150), (500, 600), (1000, 1010)]
    assert m.ranges[0] == (50, 100, 5)  # b touched 50-150 first
    assert m.bytes == 150 + 100 + 10 and m.boots == 2


def test_a_profile_is_bounded(tmp_path):
    many = Profile(IMAGE.id, "v1", IMAGE.size, [(i * 10, 5, i) for i in range(MAX_RANGES)])
    more = Profile(IMAGE.id, "v1", IMAGE.size, [(i * 10 + 5, 1, MAX_RANGES + i)
                                                 for i in range(100)])
    merged = many.merged(more)
    assert len(merged.ranges) == MAX_RANGES
    assert all(t < MAX_RANGES for _, _, t in merged.ranges)  # the earliest are kept


def test_saves_merge_atomically_and_damage_is_ignored_with_one_warning(tmp_path, caplog):
    store = ProfileStore(tmp_path / "p")
    store.save(Profile(IMAGE.id, "v1", IMAGE.size, [(0, BS, 0)]))
    saved = store.save(Profile(IMAGE.id, "v1", IMAGE.size, [(5 * BS, BS, 3)]))
    assert saved.boots == 2 and store.load(IMAGE.id, "v1").ranges == saved.ranges
    assert [p.name for p in (tmp_path / "p").iterdir()] == [store.path(IMAGE.id, "v1").name]
    assert store.load(IMAGE.id, "v2") is None  # another version's bytes: no profile
    store.path(IMAGE.id, "v1").write_text('{"imagefs_profile": 1, "ranges": [[0, -1')
    with caplog.at_level(logging.WARNING):
        assert store.load(IMAGE.id, "v1") is None
        assert store.load(IMAGE.id, "v1") is None
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    # a profile copied under another image's name never applies
    other = ProfileStore(tmp_path / "p")
    store.path("99999999-2222-3333-4444-555555555555", "v1").write_text(
        Profile(IMAGE.id, "v1", IMAGE.size, [(0, 1, 0)]).to_json())
    assert other.load("99999999-2222-3333-4444-555555555555", "v1") is None
    assert json.loads(Profile(IMAGE.id, "v1", 1, [(0, 1, 0)]).to_json())["imagefs_profile"] == 1


def test_warm_fetches_in_order_in_runs_and_cached_blocks_cost_nothing():
    data = data_of(64 * BS)
    source = FakeSource(data)

    async def body(reader, image):
        assert await reader.read(image, 10 * BS, 1) == data[10 * BS:10 * BS + 1]
        figures = await reader.warm(image, [(40 * BS, 44 * BS), (8 * BS, 12 * BS + 1)])
        assert figures["blocks"] == 9 and figures["cached"] == 1
        assert figures["fetched"] == 8 * BS and figures["failed"] == 0
        sent = source.sent
        for offset in (40 * BS, 8 * BS, 11 * BS, 12 * BS):
            assert await reader.read(image, offset, BS) == data[offset:offset + BS]
        assert source.sent == sent  # every warmed block is served without a fetch
        return figures

    run(source, body)
    # one request per run of blocks: 40-43; 8-9 and 11-12 (10 was cached)
    assert source.log[1:] == [(40 * BS, 44 * BS), (8 * BS, 10 * BS), (11 * BS, 13 * BS)]


def test_a_reader_goes_before_a_warm_up_and_shares_its_blocks():
    data = data_of(256 * BS)
    source = FakeSource(data)

    async def body(reader, image):
        order = []
        async with trio.open_nursery() as n:
            async def warm():
                await reader.warm(image, [(0, 256 * BS)])
                order.append("warm")

            async def read():
                await trio.sleep(0)  # the warm-up has started
                assert await reader.read(image, 200 * BS, 10) == data[200 * BS:200 * BS + 10]
                order.append("read")
            n.start_soon(warm)
            n.start_soon(read)
        assert order == ["read", "warm"]

    run(source, body, memory=512 * BS)
    assert source.sent == len(data)  # nothing twice


def test_a_failing_warm_up_gives_up_at_the_deadline_and_readers_fetch_for_themselves():
    data = data_of(8 * BS)
    source = FakeSource(data)

    async def body(reader, image):
        source.fail = 10 ** 6
        figures = await reader.warm(image, [(0, 4 * BS)])
        assert figures["failed"] == 4 and figures["fetched"] == 0
        source.fail = 0
        assert await reader.read(image, 0, BS) == data[:BS]  # not the warm-up's failure

    run(source, body)


def test_a_recording_of_most_of_an_image_is_a_copy_and_is_not_saved(tmp_path):
    import types

    from imagefs.profiles import BootProfiles, _Recording
    store = ProfileStore(tmp_path / "p")
    profiles = BootProfiles(store, types.SimpleNamespace(block_size=BS), 120, nursery=None)
    profiles._save(_Recording(IMAGE, 0.0, {i: i / 10 for i in range(60)}))  # 60 of 101
    assert store.load(IMAGE.id, "v1") is None
    profiles._save(_Recording(IMAGE, 0.0, {i: i / 10 for i in range(6)}))
    assert store.load(IMAGE.id, "v1").bytes == 6 * BS
