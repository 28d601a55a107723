"""What a disk cache holds, by image: each image directory's index file.

An image directory's name is a sha256 (``disk._image_dir``), which says
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

``read_cache`` reads a cache directory without opening a ``DiskCache`` (no
scan, no clean-up, no eviction): ``imagefs cache list`` on a cache that no
mount holds.  Its caller holds the cache's lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..atomic import write_whole

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
