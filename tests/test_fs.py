"""The filesystem's logic called directly, without the kernel, on both drivers."""

from __future__ import annotations

import errno
import json
import random
import stat
import time

import pytest
import trio
from conftest import ADMIN, ALICE, BOB, FAST_RETRY, make_image, random_bytes

from imagefs import errors
from imagefs.api import API
from imagefs.blocks import FAILURE_GRACE, BlockReader
from imagefs.cache import DiskCache, MemoryCache, TieredCache
from imagefs.cache.disk import GROUP_BLOCKS
from imagefs.config import MountConfig
from imagefs.drivers.glance import GlanceDriver
from imagefs.fs import DATA, METADATA, ROOT_INODE, FsError, ImageFS, metadata_bytes

KiB, MiB = 1 << 10, 1 << 20


def run_fs(api, ctx, tmp_path, body, clock=None, **overrides):
    """Run ``await body(fs)`` with a filesystem over ``api`` as ``ctx`` (on ``clock``,
    trio's MockClock say; the system's by default)."""
    settings = dict(cache_dir=tmp_path / "cache", block_size=64 * KiB,
                    memory_cache=1 * MiB, cache_size=64 * MiB, list_ttl=0.5, record_ttl=0.5,
                    read_deadline=5.0, retry=FAST_RETRY)
    settings.update(overrides)
    config = MountConfig(**settings)

    async def main():
        async with trio.open_nursery() as nursery:
            disk = DiskCache(config.cache_dir, config.cache_size) if config.cache_size else None
            blocks = BlockReader(lambda image, direct: api.source(ctx, image.id),
                                 TieredCache(MemoryCache(config.memory_cache), disk),
                                 block_size=config.block_size,
                                 fetch_threads=config.fetch_threads,
                                 read_deadline=config.read_deadline, retry=config.retry,
                                 nursery=nursery)
            fs = ImageFS(api, ctx, config, blocks)
            try:
                return await body(fs)
            finally:
                nursery.cancel_scope.cancel()
                if disk is not None:
                    disk.close()  # what streams queued for the disk tier, as at unmount

    return trio.run(main, clock=clock)


def glance_image(glance, tag, size, timeout=30.0):
    """An API on the test Glance, ``size`` random bytes, and alice's image of them."""
    api = API(GlanceDriver(glance.url, timeout=timeout), retry=FAST_RETRY)
    data = random_bytes(size)
    return api, data, make_image(api, ALICE, tag, data=data)


async def open_data(fs, image_id):
    d = await fs.lookup(ROOT_INODE, image_id)
    data = await fs.lookup(d.ino, DATA)
    fh, keep = await fs.open(data.ino, False)
    return fh


def test_listing_metadata_and_attributes(backend, tag, tmp_path):
    data = random_bytes(200_000)
    image = make_image(backend.api, ALICE, tag, data=data, properties={"os_distro": "x"})
    hidden = make_image(backend.api, BOB, tag, data=b"bob", visibility="private")

    async def body(fs):
        names = await fs.listing()
        assert image["id"] in names and hidden["id"] not in names
        d = await fs.lookup(ROOT_INODE, image["id"])
        assert stat.S_ISDIR(d.mode) and stat.S_IMODE(d.mode) == 0o555
        meta = await fs.lookup(d.ino, METADATA)
        record = backend.api.get(ALICE, image["id"])
        assert meta.size == len(metadata_bytes(record))
        assert stat.S_IMODE(meta.mode) == 0o444
        fh, keep = await fs.open(meta.ino, False)
        content = await fs.read(fh, 0, 1 << 20)
        assert json.loads(content) == record and len(content) == meta.size
        dat = await fs.lookup(d.ino, DATA)
        assert dat.size == len(data) and stat.S_IMODE(dat.mode) == 0o444
        fh = await fs.open(dat.ino, False)
        assert fh[1] is True  # the kernel may keep the data's pages
        dirfh = await fs.opendir(d.ino)
        assert [n for n, _, _ in fs.readdir(dirfh, 0)] == [METADATA, DATA]
        assert [n for n, _, _ in fs.readdir(dirfh, 1)] == [DATA]
        for name in ("nope", "..x"):
            with pytest.raises(FsError) as e:
                await fs.lookup(d.ino, name)
            assert e.value.errno == errno.ENOENT
        with pytest.raises(errors.ImageNotFound):
            await fs.lookup(ROOT_INODE, hidden["id"])  # by id, not only by listing
        with pytest.raises(FsError) as e:
            await fs.lookup(ROOT_INODE, "not-an-image")
        assert e.value.errno == errno.ENOENT
        with pytest.raises(FsError) as e:
            await fs.open(dat.ino, True)
        assert e.value.errno == errno.EROFS

    run_fs(backend.api, ALICE, tmp_path, body)


def test_metadata_json_holds_no_locations_even_when_glance_sends_them(glance_locations, tag,
                                                                     tmp_path):
    api = API(GlanceDriver(glance_locations.url, timeout=10), retry=FAST_RETRY)
    image = make_image(api, ADMIN, tag, visibility="public")
    exposed = api.get(ADMIN, image["id"], include_locations=True)
    assert exposed["direct_url"].startswith("file://") and exposed["locations"]

    class Leaky(API):  # an API that passes the locations up with every record
        def get(self, context, id_or_uri, include_locations=False, show_deleted=True):
            return super().get(context, id_or_uri, True, show_deleted)

        def get_all(self, context, **kwargs):
            return (self.get(context, r["id"]) for r in super().get_all(context, **kwargs))

    leaky = Leaky(api.default, retry=FAST_RETRY)

    async def body(fs):
        d = await fs.lookup(ROOT_INODE, image["id"])
        meta = await fs.lookup(d.ino, METADATA)
        fh, _ = await fs.open(meta.ino, False)
        content = await fs.read(fh, 0, 1 << 20)
        assert len(content) == meta.size
        record = json.loads(content)
        assert record["id"] == image["id"] and record["stores"] == ["fs"]
        assert "locations" not in record and "direct_url" not in record
        assert b"file://" not in content

    run_fs(api, ADMIN, tmp_path / "plain", body)
    run_fs(leaky, ADMIN, tmp_path / "leaky", body)


def test_random_reads_are_byte_exact(backend, tag, tmp_path):
    size = 64 * KiB * 20 + 12_345  # a partial last block
    data = random_bytes(size)
    image = make_image(backend.api, ALICE, tag, data=data)
    rng = random.Random(7)
    cases = [(0, 1), (64 * KiB - 1, 2), (64 * KiB * 3 - 10, 64 * KiB * 2 + 20), (size - 5, 100),
             (size, 10), (size + 100, 10), (0, size + 1000)]
    cases += [(rng.randrange(size), rng.randrange(1, 300 * KiB)) for _ in range(60)]

    async def body(fs):
        fh = await open_data(fs, image["id"])
        for offset, length in cases:
            assert await fs.read(fh, offset, length) == data[offset:offset + length], \
                (offset, length)

    run_fs(backend.api, ALICE, tmp_path, body)


def test_one_fetch_per_block_however_many_readers(glance_clean, tag, tmp_path):
    api, data, image = glance_image(glance_clean, tag, 64 * KiB * 4)

    async def body(fs):
        handles = [await open_data(fs, image["id"]) for _ in range(20)]  # 20 readers
        glance_clean.reset()
        results = {}

        async def reader(i):
            results[i] = await fs.read(handles[i], 64 * KiB + i * 100, 4096)
        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(reader, i)
        for i in range(20):
            assert results[i] == data[64 * KiB + i * 100:][:4096]
        stats = glance_clean.stats()
        assert stats["data_requests"] == 1 and stats["data_bytes"] == 64 * KiB
        return fs.blocks.stats

    stats = run_fs(api, ALICE, tmp_path, body)
    assert stats["fetched_blocks"] == 1


def test_sequential_reads_fetch_ahead_in_large_requests(glance_clean, tag, tmp_path):
    api, data, image = glance_image(glance_clean, tag, 64 * KiB * 256)

    async def body(fs):
        fh = await open_data(fs, image["id"])
        glance_clean.reset()
        out = bytearray()
        for offset in range(0, len(data), 16 * KiB):
            out += await fs.read(fh, offset, 16 * KiB)
        assert bytes(out) == data
        stats = glance_clean.stats()
        assert stats["data_bytes"] == len(data)  # each byte once
        # A block at a time until the run is 4 MiB long (64 blocks), then a few
        # requests for runs of blocks (windows of up to an eighth of the run), not a
        # GET per block.
        assert stats["data_requests"] <= 64 + 24

    run_fs(api, ALICE, tmp_path, body, memory_cache=64 * MiB)


def test_a_long_sequential_read_is_a_few_long_requests(glance_clean, tag, tmp_path):
    """Glance spends ~10 ms of CPU on every request: past the first 4 MiB (a block
    at a time) a whole-image read is a few requests that grow, each read only as
    far as the readahead window, and every byte is sent once."""
    api, data, image = glance_image(glance_clean, tag, 160 * MiB + 123)

    async def body(fs):
        fh = await open_data(fs, image["id"])
        glance_clean.reset()
        for offset in range(0, len(data), MiB):
            assert await fs.read(fh, offset, MiB) == data[offset:offset + MiB]
        assert fs.blocks.stats["fetched_bytes"] == len(data)  # each block fetched once
        return glance_clean.stats()

    stats = run_fs(api, ALICE, tmp_path, body, memory_cache=64 * MiB)
    # Sent, not read: what the socket buffers held of a request that went past its
    # stream's limit when the stream ended (the first streams, on 4-block windows).
    assert len(data) <= stats["data_bytes"] <= len(data) * 1.02
    assert stats["data_requests"] <= 64 + 40  # requests that end at the window: 64 + 44


def test_readers_of_one_image_share_its_readahead(glance_clean, tag, tmp_path):
    """Several readers of one image: the kernel sends the mount each page once,
    from whichever reader got there first, so each reader's own reads have holes.
    Taken together they are one sequential run, and get a stream."""
    api, data, image = glance_image(glance_clean, tag, 64 * KiB * 256)

    async def body(fs):
        handles = [await open_data(fs, image["id"]) for _ in range(4)]
        glance_clean.reset()
        for index in range(256):  # block i read through handle i % 4
            fh = handles[index % 4]
            assert await fs.read(fh, index * 64 * KiB, 64 * KiB) == \
                data[index * 64 * KiB:(index + 1) * 64 * KiB]
        return glance_clean.stats()

    stats = run_fs(api, ALICE, tmp_path, body, memory_cache=64 * MiB)
    assert stats["data_bytes"] <= len(data) * 1.02
    assert stats["data_requests"] <= 64 + 24  # each reader alone: 256, a block each


def test_store_that_refuses_ranges_fills_blocks_by_streaming(glance_clean, tag, tmp_path):
    api, data, image = glance_image(glance_clean, tag, 64 * KiB * 10 + 999)
    glance_clean.faults(refuse_ranges=True)

    async def body(fs):
        fh = await open_data(fs, image["id"])
        glance_clean.reset()
        glance_clean.faults(refuse_ranges=True)
        rng = random.Random(3)
        for _ in range(30):
            offset, length = rng.randrange(len(data)), rng.randrange(1, 100 * KiB)
            assert await fs.read(fh, offset, length) == data[offset:offset + length]
        assert await fs.read(fh, 0, len(data)) == data
        return glance_clean.stats()

    stats = run_fs(api, ALICE, tmp_path, body)
    # refused ranges (the first read asked for its two blocks at once), then
    # whole streams from the start: far fewer requests than reads
    assert stats["range_requests"] <= 2 and stats["data_requests"] <= 5


def test_outage_gives_an_error_within_the_deadline_then_recovers(glance_clean, tag, tmp_path):
    api, data, image = glance_image(glance_clean, tag, 64 * KiB * 4, timeout=2)

    async def body(fs):
        fh = await open_data(fs, image["id"])
        cached = await fs.read(fh, 0, 100)
        glance_clean.faults(down=True)
        start = time.monotonic()
        with pytest.raises(errors.BackendUnavailable):
            await fs.read(fh, 3 * 64 * KiB, 100)
        took = time.monotonic() - start
        assert took < 5.5  # retried until the deadline (5 s), not past it
        assert await fs.read(fh, 0, 100) == cached == data[:100]  # cached blocks still serve
        assert image["id"] in await fs.listing()  # a stale listing rather than an error
        glance_clean.faults()
        # The failure answers the kernel's immediate re-read of the block for a
        # moment; after that, the block is fetched again.
        await trio.sleep(FAILURE_GRACE)
        assert await fs.read(fh, 3 * 64 * KiB, 100) == data[3 * 64 * KiB:][:100]
        return took

    took = run_fs(api, ALICE, tmp_path, body)
    print(f"outage to error: {took:.2f}s")


def test_an_o_direct_reread_right_after_an_outage_gets_its_bytes(glance_clean, tag, tmp_path):
    """The failure grace answers only the kernel's immediate re-read of a failed
    buffered page: a file opened O_DIRECT gets no such re-read, so its reader's
    next read, once the service is back, is fetched rather than failed."""
    api, data, image = glance_image(glance_clean, tag, 64 * KiB * 4, timeout=2)
    block = 64 * KiB

    async def body(fs):
        d = await fs.lookup(ROOT_INODE, image["id"])
        ino = (await fs.lookup(d.ino, DATA)).ino
        direct, _ = await fs.open(ino, False, direct=True)
        paged, _ = await fs.open(ino, False)
        glance_clean.faults(down=True)

        async def fails(fh, offset):
            with pytest.raises(errors.BackendUnavailable):
                await fs.read(fh, offset, 100)
        async with trio.open_nursery() as nursery:  # both fail at the same moment
            nursery.start_soon(fails, direct, 3 * block)
            nursery.start_soon(fails, paged, 2 * block)
        glance_clean.faults()
        failed = trio.current_time()
        assert await fs.read(direct, 3 * block, 100) == data[3 * block:][:100]
        with pytest.raises(errors.BackendUnavailable):  # the kernel's re-read: at once
            await fs.read(paged, 2 * block + 4096, 100)
        assert trio.current_time() - failed < FAILURE_GRACE  # both within the grace

    run_fs(api, ALICE, tmp_path, body, read_deadline=1.0, max_readahead=0)


def test_deleted_image_disappears_and_uncached_reads_fail(backend, tag, tmp_path):
    """What a real store answers for a deleted image, and what the mount makes of it.
    No TTLs here (0: every listing and record is asked for); how long a deleted
    image stays is test_fs_ttl.py's, on the mock clock."""
    data = random_bytes(64 * KiB * 4)
    image = make_image(backend.api, ALICE, tag, data=data)

    async def body(fs):
        fh = await open_data(fs, image["id"])
        assert await fs.read(fh, 0, 10) == data[:10]
        backend.api.delete(ALICE, image["id"])
        assert image["id"] not in await fs.listing()
        with pytest.raises(errors.ImageNotFound):
            await fs.lookup(ROOT_INODE, image["id"])
        assert await fs.read(fh, 0, 10) == data[:10]  # cached: still served
        with pytest.raises((errors.ImageNotFound, errors.ImageNoData)):
            await fs.read(fh, 3 * 64 * KiB, 10)

    run_fs(backend.api, ALICE, tmp_path, body, cache_size=0, list_ttl=0, record_ttl=0)


def test_new_image_is_reachable_at_once(backend, tag, tmp_path):
    first = make_image(backend.api, ALICE, tag)

    async def body(fs):
        assert first["id"] in await fs.listing()
        new = make_image(backend.api, ALICE, tag, data=b"new")
        assert new["id"] not in await fs.listing()  # the cached listing
        d = await fs.lookup(ROOT_INODE, new["id"])
        assert stat.S_ISDIR(d.mode)

    run_fs(backend.api, ALICE, tmp_path, body, list_ttl=60)


def test_corrupt_disk_block_is_fetched_again(backend, tag, tmp_path):
    data = random_bytes(64 * KiB * 2)
    image = make_image(backend.api, ALICE, tag, data=data)

    async def read_all(fs):
        fh = await open_data(fs, image["id"])
        return await fs.read(fh, 0, len(data)), dict(fs.blocks.stats)

    got, stats = run_fs(backend.api, ALICE, tmp_path, read_all)
    assert got == data and stats["fetched_bytes"] == len(data)
    files = [p for p in (tmp_path / "cache" / "blocks").rglob("*")
             if p.is_file() and p.name != "image.json"]  # group files, not the index
    assert len(files) == 1  # both blocks in one group file
    raw = bytearray(files[0].read_bytes())
    raw[100] ^= 0xFF  # a byte of the first block
    files[0].write_bytes(bytes(raw))
    got, stats = run_fs(backend.api, ALICE, tmp_path, read_all)
    assert got == data
    assert stats["fetched_bytes"] == 64 * KiB and stats["disk_hits"] == 1


def test_a_remount_reads_disk_runs_and_refetches_only_a_corrupt_block(backend, tag, tmp_path):
    n = 40  # blocks: group files of GROUP_BLOCKS, the second one damaged below
    data = random_bytes(64 * KiB * n)
    image = make_image(backend.api, ALICE, tag, data=data)

    async def read_sequentially(fs):
        fh = await open_data(fs, image["id"])
        parts = [await fs.read(fh, off, 64 * KiB) for off in range(0, len(data), 64 * KiB)]
        return b"".join(parts), dict(fs.blocks.stats)

    got, stats = run_fs(backend.api, ALICE, tmp_path, read_sequentially)
    assert got == data and stats["fetched_bytes"] == len(data)
    bad = GROUP_BLOCKS + 4
    group = next(p for p in (tmp_path / "cache" / "blocks").rglob("1") if p.is_file())
    with open(group, "r+b") as f:
        f.seek(4 * 64 * KiB + 7)  # in its fifth block
        byte = f.read(1)[0]
        f.seek(-1, 1)
        f.write(bytes([byte ^ 1]))
    got, stats = run_fs(backend.api, ALICE, tmp_path, read_sequentially)
    assert got == data
    assert stats["fetched_bytes"] == 64 * KiB and stats["disk_hits"] == n - 1, bad


def test_a_slow_fetch_stalls_neither_other_readers_nor_listings(glance_clean, tag, tmp_path):
    """Real time against a real Glance: a listing is fetched (list_ttl 0: each one
    is) while a slow HTTP fetch holds a worker thread.  Under the mock clock the
    stalled fetch would only move the clock (to its read deadline)."""
    api, data, image = glance_image(glance_clean, tag, 64 * KiB * 8)

    async def body(fs):
        fh = await open_data(fs, image["id"])
        assert await fs.read(fh, 0, 10) == data[:10]  # block 0 cached
        glance_clean.faults(delay=2.0)  # every data GET now takes 2 s
        timings = {}

        async def slow():
            start = time.monotonic()
            other = await open_data(fs, image["id"])
            assert await fs.read(other, 5 * 64 * KiB, 10) == data[5 * 64 * KiB:][:10]
            timings["slow"] = time.monotonic() - start

        async with trio.open_nursery() as n:
            n.start_soon(slow)
            await trio.sleep(0.2)  # the slow fetch is under way
            start = time.monotonic()
            assert await fs.read(fh, 100, 10) == data[100:110]
            listed = time.monotonic()
            calls = fs.api_calls["list"]
            assert image["id"] in await fs.listing()
            assert fs.api_calls["list"] == calls + 1  # fetched, not the cached one
            timings["cached read"] = listed - start
            timings["listing"] = time.monotonic() - listed
        return timings

    timings = run_fs(api, ALICE, tmp_path, body, list_ttl=0)
    assert timings["slow"] >= 2.0
    assert timings["cached read"] < 0.5 and timings["listing"] < 1.0, timings


def test_names_are_safe_file_names_and_the_newest_image_has_a_repeated_name():
    from imagefs.names import by_name, safe_name

    assert safe_name("cirros/0.6") == "cirros%2F0.6"
    assert safe_name("..") == "%2E%2E" and safe_name(".") == "%2E"
    assert safe_name("a\0b%") == "a%00b%25"
    assert safe_name("") is None and safe_name(None) is None
    long = safe_name("é" * 300)
    assert len(long.encode()) <= 255 and "~" in long and "/" not in long
    assert safe_name("é" * 300) != safe_name("é" * 299 + "e")
    records = [{"id": "a", "name": "x", "created_at": "2026-01-01T00:00:00Z"},
               {"id": "b", "name": "x", "created_at": "2026-02-01T00:00:00Z"},
               {"id": "c", "name": "y/z", "created_at": "2026-01-01T00:00:00Z"}]
    assert by_name(records) == {"x": "b", "y%2Fz": "c"}


def test_by_name_links_point_at_the_image_directory(tag, tmp_path):
    from memory_driver import MemoryDriver

    driver = MemoryDriver()  # explicit created_at: which image is newer is the test's
    api = API(driver, retry=FAST_RETRY)
    data = random_bytes(1000)
    older = make_image(api, ALICE, tag, data=b"old", name=f"../{tag}")
    driver.now = "2026-01-01T00:00:01Z"
    newer = make_image(api, ALICE, tag, data=data, name=f"../{tag}")

    async def body(fs):
        from imagefs.fs import BY_NAME, BY_NAME_INODE
        root = await fs.opendir(ROOT_INODE)
        assert BY_NAME in [name for name, _, _ in fs.readdir(root, 0)]
        assert (await fs.lookup(ROOT_INODE, BY_NAME)).ino == BY_NAME_INODE
        fh = await fs.opendir(BY_NAME_INODE)
        names = [name for name, _, _ in fs.readdir(fh, 0)]
        assert f"..%2F{tag}" in names and not any("/" in n for n in names)
        attr = await fs.lookup(BY_NAME_INODE, f"..%2F{tag}")
        assert stat.S_ISLNK(attr.mode)
        assert fs.readlink(attr.ino) == f"../{newer['id']}"
        with pytest.raises(FsError):
            await fs.lookup(BY_NAME_INODE, "no such name")
        return older

    run_fs(api, ALICE, tmp_path, body)
