"""``imagefs cache list|evict|purge``: on a cache directory no mount holds, and through a
running mount's daemon."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import ALICE, make_image, random_bytes

from imagefs.cache import BlockKey, DiskCache
from imagefs.cli import main
from imagefs.mount import lock_cache_dir

MiB = 1 << 20
A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"
MISSING = "33333333-3333-4333-8333-333333333333"


def cache_of_two(root: Path) -> DiskCache:
    """A cache with blocks of A (described: a name and a size) and B (not described),
    and a directory of an older imagefs, with no index."""
    disk = DiskCache(root, 1 << 30)
    disk.describe(BlockKey(A, "va", 64 << 10, 0), name="alpine", size=200_000)
    for i in range(3):
        disk.store(BlockKey(A, "va", 64 << 10, i), b"a" * 1000)
    disk.store(BlockKey(B, "vb", 64 << 10, 0), b"b" * 1000)
    old = disk.path(BlockKey("old", "v", 64 << 10, 0)).parent
    old.mkdir()
    shutil.copy(disk.path(BlockKey(B, "vb", 64 << 10, 0)), old / "0")  # a group, no index
    disk.close()
    return disk


def cache(capsys, *args) -> tuple[int, str, str]:
    code = main(["cache", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_each_images_id_name_size_and_cached_bytes(tmp_path, capsys):
    cache_of_two(tmp_path / "c")
    code, out, _ = cache(capsys, "list", "--cache-dir", str(tmp_path / "c"), "-f", "json")
    assert code == 0
    images = {i["id"]: i for i in json.loads(out)}
    assert images[A]["name"] == "alpine" and images[A]["size"] == 200_000
    assert images[A]["cached_bytes"] == 3 * (64 << 10) and images[A]["version"] == "va"
    assert images[B]["name"] is None and images[B]["cached_bytes"] == 64 << 10
    assert images[None]["cached_bytes"] == 64 << 10  # the old directory: unknown image
    code, out, _ = cache(capsys, "list", "--cache-dir", str(tmp_path / "c"))
    assert code == 0
    row_b = next(line for line in out.splitlines() if B in line)
    assert [c.strip() for c in row_b.strip("|").split("|")] == [B, "-", "vb", "-", "65536"]
    assert "alpine" in out


def test_evict_removes_only_the_images_named(tmp_path, capsys):
    cache_of_two(tmp_path / "c")
    code, out, _ = cache(capsys, "evict", A, "--cache-dir", str(tmp_path / "c"))
    assert code == 0 and A in out and "alpine" in out
    left = DiskCache(tmp_path / "c", 1 << 30)
    assert {i.id for i in left.images()} == {B, None}
    assert left.load(BlockKey(B, "vb", 64 << 10, 0)) == b"b" * 1000


@pytest.mark.parametrize("ids, code", [([A, MISSING], 1), ([A, "not-an-id"], 2)],
                         ids=["unknown", "malformed"])
def test_an_unknown_or_malformed_id_is_one_line_and_evicts_nothing(tmp_path, capsys, ids, code):
    cache_of_two(tmp_path / "c")
    def blocks():
        return sorted((p.relative_to(tmp_path), p.read_bytes() if p.is_file() else b"")
                      for p in (tmp_path / "c" / "blocks").rglob("*"))
    before = blocks()
    got, out, err = cache(capsys, "evict", *ids, "--cache-dir", str(tmp_path / "c"))
    assert got == code and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert (MISSING if code == 1 else "not-an-id") in err
    assert blocks() == before


def test_purge_removes_every_image_directory_with_or_without_an_index(tmp_path, capsys):
    cache_of_two(tmp_path / "c")
    code, out, _ = cache(capsys, "purge", "--cache-dir", str(tmp_path / "c"), "-f", "json")
    assert code == 0 and len(json.loads(out)) == 3
    assert list((tmp_path / "c" / "blocks").iterdir()) == []
    assert (tmp_path / "c" / "CACHEDIR.TAG").is_file()  # still a cache


def test_a_directory_that_is_not_a_cache_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes").write_text("mine")
    code, _, err = cache(capsys, "purge", "--cache-dir", str(tmp_path / "d"))
    assert code == 2 and "not an imagefs cache" in err
    assert os.listdir(tmp_path / "d") == ["notes"]
    code, _, err = cache(capsys, "list", "--cache-dir", str(tmp_path / "none"))
    assert code == 2 and not (tmp_path / "none").exists()


def test_a_cache_locked_by_a_mount_that_does_not_answer_is_not_touched(tmp_path, capsys):
    cache_of_two(tmp_path / "c")
    fd = lock_cache_dir(tmp_path / "c")  # as a mount holds it; no control socket
    try:
        code, _, err = cache(capsys, "purge", "--cache-dir", str(tmp_path / "c"))
    finally:
        os.close(fd)
    assert code == 2 and "does not answer" in err and len(err.strip().splitlines()) == 1
    assert len(list((tmp_path / "c" / "blocks").iterdir())) == 3


# ---- through a running mount -------------------------------------------------------------
@pytest.fixture
def short_dir():
    """A directory with a short path: a unix socket's path is at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="wt-cache-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def drop_pages(path: Path) -> None:
    """Make the next read of ``path`` on the mount reach the daemon, not the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.mount
@pytest.mark.glance
def test_list_and_evict_through_a_running_mount_then_a_read_fetches_again(
        glance_clean, tmp_path, short_dir, tag):
    # (Importing test_mount skips this test where there is no FUSE.)
    from test_mount import Mount, cached_by_image, imagefs, settled

    from imagefs.api import API
    from imagefs.drivers.glance import GlanceDriver

    api = API(GlanceDriver(glance_clean.url))
    data = {n: random_bytes(3 * MiB + 5) for n in ("evicted", "kept")}
    ids = {n: make_image(api, ALICE, tag, data=d, name=f"cachectl-{n}")["id"]
           for n, d in data.items()}
    cache_dir = short_dir / "cache"
    m = Mount(tmp_path / "mnt", cache_dir,
              {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url})
    try:
        for n, d in data.items():
            assert (m.image(ids[n]) / "data").read_bytes() == d
        settled(cache_dir)
        listed = imagefs("cache", "list", "--mount", str(m.path), "-f", "json")
        assert listed.returncode == 0, listed.stderr
        names = {i["id"]: (i["name"], i["cached_bytes"], i["size"])
                 for i in json.loads(listed.stdout)}
        # whole blocks of the default 256 KiB are cached
        assert names[ids["evicted"]] == ("cachectl-evicted", 3 * MiB + 256 * 1024, 3 * MiB + 5)
        assert names[ids["kept"]][0] == "cachectl-kept"

        refused = imagefs("cache", "evict", ids["evicted"], MISSING, "--cache-dir",
                          str(cache_dir))
        assert refused.returncode == 1 and MISSING in refused.stderr
        assert set(cached_by_image(cache_dir)) == set(ids.values())

        # The cache dir is locked by the mount: the command goes through its daemon.
        done = imagefs("cache", "evict", ids["evicted"], "--cache-dir", str(cache_dir))
        assert done.returncode == 0, done.stderr
        assert set(cached_by_image(cache_dir)) == {ids["kept"]}
        after = json.loads(imagefs("cache", "list", "--mount", str(m.path), "-f",
                                   "json").stdout)
        assert [i["id"] for i in after] == [ids["kept"]]

        glance_clean.reset()
        path = m.image(ids["evicted"]) / "data"
        drop_pages(path)
        assert path.read_bytes() == data["evicted"]  # byte-exact, from Glance again
        assert glance_clean.stats()["data_bytes"] >= len(data["evicted"])
        kept = m.image(ids["kept"]) / "data"
        drop_pages(kept)
        glance_clean.reset()
        assert kept.read_bytes() == data["kept"]
        assert glance_clean.stats()["data_bytes"] == 0  # still cached
        assert ids["evicted"] in settled(cache_dir)  # cached again, with its index

        purged = imagefs("cache", "purge", "--mount", str(m.path), "-f", "json")
        assert purged.returncode == 0, purged.stderr
        assert cached_by_image(cache_dir) == {}
    finally:
        assert m.unmount() == 0, m.output()
    assert "Traceback" not in m.output(), m.output()
