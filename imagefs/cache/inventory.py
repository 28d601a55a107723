"""What a disk cache holds, by image: each image directory's index file.

An image directory's name is a sha256 (``groupfile.image_dir``), which says
nothing to an operator.  So each one carries a small index, written
atomically (a temporary file renamed into place) when the directory is
created::

    blocks/<image dir>/image.json
        {"id": ..., "version": ..., "block_size": ..., "name": ..., "size": ...,
         "visibility": ...}

``id``, ``version`` and ``block_size`` are always there (they come with the
block's key); ``name``, ``size`` and ``visibility`` only when the mount
knew the image's record.  A directory of an older imagefs has no index: it
is listed with an unknown id, and only ``purge`` removes it.

``Inventory`` is an open ``DiskCache``'s side of this: which image
directories exist and what each one's index says (or will say: ``describe``
is cheap and callable on the trio thread; the index is written at the next
store into the directory, when it learnt more, a name or a size, than the
file says).  ``read_cache`` reads a cache directory without opening a
``DiskCache`` (no scan, no clean-up, no eviction): ``imagefs cache list`` on
a cache that no mount holds.  Its caller holds the cache's lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from ..atomic import write_whole
from .keys import BlockKey

log = logging.getLogger("imagefs.cache.disk")  # the disk tier logs under one name

INDEX_NAME = "image.json"
_FIELDS = ("id", "version", "block_size", "name", "size", "visibility")


@dataclasses.dataclass
class CachedImage:
    """One image directory: what its index says, and the bytes of its blocks."""
    dir: str
    id: str | None = None          # None: a directory without an index
    version: str | None = None
    block_size: int | None = None
    name: str | None = None
    size: int | None = None
    visibility: str | None = None
    cached_bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CachedImage:
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)
                      if f.name in data})


def read_index(image_dir: Path) -> dict[str, Any] | None:
    """The directory's index, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads((image_dir / INDEX_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        return None
    return {k: data.get(k) for k in _FIELDS}


def write_index(image_dir: Path, about: dict[str, Any]) -> None:
    """Write the index whole, or leave the one there was: a temporary file of this
    process and thread, renamed into place.  Raises ``OSError``."""
    data = json.dumps({k: about.get(k) for k in _FIELDS}, sort_keys=True).encode()
    write_whole(image_dir / INDEX_NAME, data)


def read_cache(blocks: Path, slots_in) -> list[CachedImage]:
    """Every image directory under ``blocks``, with the bytes its group files hold
    (``slots_in(path, block_size)``: the slots a group file holds)."""
    found = []
    for sub in sorted(blocks.iterdir()) if blocks.is_dir() else ():
        _, _, block_size = sub.name.partition(".")
        if not (sub.is_dir() and block_size.isdigit()):
            continue
        image = CachedImage(sub.name, **(read_index(sub) or {}))
        for entry in os.scandir(sub):
            with contextlib.suppress(OSError, ValueError):
                int(entry.name, 16)
                if entry.is_file(follow_symlinks=False):
                    image.cached_bytes += len(slots_in(entry.path, int(block_size))) * \
                        int(block_size)
        found.append(image)
    return found


def remove_image_dir(blocks: Path, image_dir: str) -> None:
    """Remove one image directory, blocks and index (``image_dir`` is a name found
    under ``blocks``, never a path given by a user)."""
    assert "/" not in image_dir and image_dir not in ("", ".", "..")
    path = blocks / image_dir
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        raise OSError(f"cannot remove {path} (or some of it)")


class Inventory:
    """The image directories under ``blocks`` of an open cache and what their indexes
    say; thread-safe."""

    def __init__(self, blocks: Path):
        self.blocks = blocks
        self._lock = threading.Lock()
        self._dirs: set[str] = set()          # image dirs that exist
        self._about: dict[str, dict] = {}     # image dir -> what its index says (or will)
        self._indexed: set[str] = set()       # image dirs whose index says all of _about

    def found(self, image_dir: str) -> None:
        """An image directory the cache's scan found: its index is read."""
        about = read_index(self.blocks / image_dir)
        with self._lock:
            self._dirs.add(image_dir)
            if about is not None:
                self._about[image_dir] = about
                self._indexed.add(image_dir)

    def describe(self, key: BlockKey, image_dir: str, **about) -> None:
        """What the mount knows of ``key``'s image (``name``, ``size``, ``visibility``)."""
        about = {"id": key.image_id, "version": key.version, "block_size": key.block_size,
                 "name": about.get("name"), "size": about.get("size"),
                 "visibility": about.get("visibility")}
        with self._lock:
            if self._about.get(image_dir) != about:
                self._about[image_dir] = about
                self._indexed.discard(image_dir)

    def ensure(self, key: BlockKey, image_dir: str) -> None:
        """Before a store: the image directory made if missing, its index written if
        due.  Raises ``OSError`` for a directory that cannot be made."""
        if image_dir not in self._dirs:
            (self.blocks / image_dir).mkdir(mode=0o700, exist_ok=True)
            with self._lock:
                self._dirs.add(image_dir)
        if image_dir not in self._indexed:
            self._write_index(key, image_dir)

    def made_again(self, key: BlockKey, image_dir: str) -> None:
        """The image directory went (evicted) since ``ensure``: made again, indexed."""
        (self.blocks / image_dir).mkdir(mode=0o700, exist_ok=True)
        self._write_index(key, image_dir)

    def _write_index(self, key: BlockKey, image_dir: str) -> None:
        """The image directory's index, from ``describe`` or else from the key alone; a
        failure costs only the name in ``imagefs cache list``."""
        with self._lock:
            about = self._about.setdefault(image_dir, {
                "id": key.image_id, "version": key.version, "block_size": key.block_size})
            about = dict(about)
        try:
            write_index(self.blocks / image_dir, about)
        except OSError as exc:
            log.debug("disk cache: cannot write the index of %s (%s)", image_dir, exc)
            return
        with self._lock:
            if self._about.get(image_dir) == about:
                self._indexed.add(image_dir)

    def remove(self, image_dirs: set[str]) -> None:
        """Remove whole image directories from the disk (the cache has taken their
        groups out of its index)."""
        with self._lock:
            self._dirs -= image_dirs
            self._indexed -= image_dirs
        for image_dir in sorted(image_dirs):
            try:
                remove_image_dir(self.blocks, image_dir)
            except OSError as exc:
                log.warning("disk cache: %s", exc)

    def images(self, held: dict[str, int]) -> list[CachedImage]:
        """The image directories holding blocks (``held``: bytes by image directory),
        with what their indexes say."""
        with self._lock:
            return [CachedImage(d, **self._about.get(d, {}), cached_bytes=n)
                    for d, n in sorted(held.items()) if n]

    def about(self, image_dir: str) -> dict:
        """What the index of ``image_dir`` says (empty when it has none)."""
        with self._lock:
            return dict(self._about.get(image_dir, {}))

    def dirs_of(self, image_id: str) -> list[str]:
        """The image directories of ``image_id`` (any version or block size) that exist."""
        with self._lock:
            return sorted(d for d, about in self._about.items()
                          if about.get("id") == image_id and d in self._dirs)

    def all_dirs(self) -> list[str]:
        with self._lock:
            return sorted(self._dirs)
