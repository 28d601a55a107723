"""Which directory is a cache (``cache/directory.py``), through ``claim``, the mount's
lock and ``DiskCache``: imagefs owns only what it created."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cache_helpers import key

from imagefs.cache import DiskCache
from imagefs.cache.directory import claim
from imagefs.errors import ConfigError
from imagefs.mount import lock_cache_dir

SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"


def _tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), stat.S_IMODE(p.stat().st_mode))
                  for p in [root, *root.rglob("*")])


@pytest.mark.parametrize("layout", [
    {"tmp/work": "mine", "notes": "mine too"},
    {"tmp/work": "mine"},  # some of an old cache's names, but no blocks/
    {"blocks": "a file", "lock": ""},
], ids=["a_home", "only_tmp", "blocks_a_file"])
def test_cache_dir_refuses_a_non_empty_directory_that_is_not_a_cache(tmp_path, layout):
    home = tmp_path / "home"
    for name, text in layout.items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(text)
    home.chmod(0o755)
    before = _tree(home)
    for open_it in (lambda: lock_cache_dir(home), lambda: DiskCache(home, 1 << 20)):
        with pytest.raises(ConfigError, match="is not empty and is not an imagefs cache"):
            open_it()
    assert _tree(home) == before  # nothing created, removed or chmod'ed


def test_a_directory_tagged_by_another_program_is_refused(tmp_path):
    other = tmp_path / "target"
    (other / "blocks").mkdir(parents=True)
    (other / "CACHEDIR.TAG").write_text(f"{SIGNATURE}\n# This is a cache of another tool.\n")
    with pytest.raises(ConfigError, match="another program's cache"):
        DiskCache(other, 1 << 20)


def test_a_new_cache_directory_is_created_private_and_tagged(tmp_path):
    DiskCache(tmp_path / "new" / "c", 1 << 20)
    lines = (tmp_path / "new" / "c" / "CACHEDIR.TAG").read_text().splitlines()
    assert lines[0] == SIGNATURE and lines[1].startswith("#") and "imagefs" in lines[1]
    assert stat.S_IMODE((tmp_path / "new" / "c").stat().st_mode) == 0o700


def test_an_empty_directory_is_adopted_and_tagged_and_keeps_its_mode(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp is
    disk = DiskCache(shared, 1 << 20)
    disk.store(key(1), b"a" * 1000)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert (shared / "CACHEDIR.TAG").read_text().startswith(SIGNATURE)
    assert stat.S_IMODE((shared / "blocks").stat().st_mode) == 0o700  # created: ours
    assert DiskCache(shared, 1 << 20).load(key(1)) == b"a" * 1000


def test_a_cache_of_the_previous_version_is_tagged_and_keeps_its_blocks_and_tmp(tmp_path):
    root = tmp_path / "c"
    DiskCache(root, 1 << 20).store(key(1), b"a" * 1000)
    (root / "CACHEDIR.TAG").unlink()  # as the version before tags left it
    (root / "lock").write_text("123\n")
    (root / "imagefs.log").write_text("old log\n")
    (root / "tmp").mkdir()
    (root / "tmp" / "someone's").write_text("kept")
    old = root / "blocks" / "ab"  # an even older layout, inside the cache's own tree
    old.mkdir()
    (old / ("ab" * 32)).write_bytes(b"IMGFSBK1")
    disk = DiskCache(root, 1 << 20)
    assert (root / "CACHEDIR.TAG").read_text().startswith(SIGNATURE)
    assert disk.load(key(1)) == b"a" * 1000
    assert (root / "tmp" / "someone's").read_text() == "kept"
    assert (root / "imagefs.log").read_text() == "old log\n"
    assert not old.exists()


def test_a_cache_directory_that_cannot_be_created_is_refused_with_the_reason(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="cannot create cache directory .*: Not a directory"):
        DiskCache(tmp_path / "a-file" / "c", 1 << 20)


# ---- an untagged directory: adopted only if every entry is imagefs's own --------------------
IMAGE_DIR = "0123456789abcdef0123456789abcdef01234567.65536"


def _contents(root: Path) -> list[tuple[str, int, bytes]]:
    return sorted((str(p.relative_to(root)), stat.S_IMODE(p.lstat().st_mode),
                   p.read_bytes() if p.is_file() else b"") for p in [root, *root.rglob("*")])


def _make(root: Path, layout: dict[str, str]) -> None:
    for name, text in layout.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.mark.parametrize("layout, stranger", [
    ({"blocks/notes": "mine", "tmp/sub/f": "mine too"}, "blocks/notes"),
    ({f"blocks/{IMAGE_DIR}/0": "", f"blocks/{IMAGE_DIR}/notes.txt": "mine"},
     f"blocks/{IMAGE_DIR}/notes.txt"),
    ({f"blocks/{IMAGE_DIR}/1f/draft": "mine"}, f"blocks/{IMAGE_DIR}/1f"),
    ({f"blocks/ab/{'ab' * 32}": "not a block"}, f"blocks/ab/{'ab' * 32}"),
    ({f"blocks/cd/{'ab' * 32}": "IMGFSBK1"}, f"blocks/cd/{'ab' * 32}"),
    ({"blocks/photos/cat.jpg": "mine", "lock": ""}, "blocks/photos"),
    ({"blocks/x": "", "lock/inside": "a directory"}, "lock"),
], ids=["issue_21", "file_in_image_dir", "dir_in_image_dir", "block_without_magic",
        "block_in_wrong_dir", "own_dir_in_blocks", "lock_a_directory"])
def test_an_untagged_directory_whose_blocks_imagefs_did_not_write_is_refused_and_left_as_it_was(
        tmp_path, layout, stranger):
    home = tmp_path / "d"
    _make(home, layout)
    before = _contents(home)
    for open_it in (lambda: claim(home), lambda: lock_cache_dir(home),
                    lambda: DiskCache(home, 1 << 20)):
        with pytest.raises(ConfigError, match="is not empty and is not an imagefs cache") as e:
            open_it()
        assert f"{stranger} is not imagefs's" in str(e.value) and "--cache-dir" in str(e.value)
        assert "\n" not in str(e.value)
    assert _contents(home) == before  # nothing created, removed or chmod'ed


def test_an_untagged_directory_whose_blocks_is_a_symlink_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _make(elsewhere, {"notes": "mine"})
    home = tmp_path / "d"
    home.mkdir()
    (home / "blocks").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="blocks is not imagefs's"):
        DiskCache(home, 1 << 20)
    assert (elsewhere / "notes").read_text() == "mine" and not (home / "CACHEDIR.TAG").exists()


def test_an_untagged_cache_in_imagefs_own_layouts_is_adopted(tmp_path):
    """Every layout imagefs wrote before caches were tagged: image directories with their
    index (and its temporary file), the first versions' files per block, tmp, lock, log."""
    home = tmp_path / "d"
    _make(home, {f"blocks/{IMAGE_DIR}/0": "", f"blocks/{IMAGE_DIR}/1f": "",
                 f"blocks/{IMAGE_DIR}/image.json": "{}",
                 f"blocks/{IMAGE_DIR}/.image.json.12.34.tmp": "{",
                 f"blocks/ab/{'ab' * 32}": "IMGFSBK2 and a block", "lock": "123\n",
                 "imagefs.log": "old log\n", "tmp/anything/at/all": "left alone"})
    claim(home)
    assert (home / "CACHEDIR.TAG").read_text().startswith(SIGNATURE)
    assert (home / "tmp" / "anything" / "at" / "all").read_text() == "left alone"


def test_a_tagged_cache_is_taken_as_it_is_whatever_blocks_holds(tmp_path):
    home = tmp_path / "d"
    claim(home)
    _make(home, {"blocks/notes": "left by someone"})
    before = _contents(home)
    claim(home)  # tagged: only read
    assert _contents(home) == before
