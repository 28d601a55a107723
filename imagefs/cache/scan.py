"""Rebuilding the disk tier's index when the cache opens, from the group files under
``<cache dir>/blocks``: each group's trailer says which slots hold blocks, and
its file's mtime how recently it was used.

The scan cleans up inside ``blocks`` only (the directory is the cache's:
``directory.claim`` saw to that): entries of an older layout (anything but
an image directory, ``<40 hex>.<block size>``), group files with no block
left, and a directory where a group file belongs.  Other names inside an
image directory (its index, ``image.json``) are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .groupfile import remove_directory, slots_in
from .index import Group, Where

log = logging.getLogger("imagefs.cache.disk")  # the disk tier logs under one name


def scan(blocks: Path, found_dir: Callable[[str], None]) -> list[tuple[Where, Group]]:
    """The groups under ``blocks``, least recently used first; ``found_dir`` is called
    with each image directory's name."""
    found, stale = [], 0
    for sub in blocks.iterdir() if blocks.is_dir() else ():
        name, _, block_size = sub.name.partition(".")
        if not (sub.is_dir() and block_size.isdigit() and len(name) == 40):
            stale += 1  # an older version's layout
            if sub.is_dir():
                shutil.rmtree(sub, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    sub.unlink()
            continue
        found_dir(sub.name)
        for entry in os.scandir(sub):
            with contextlib.suppress(OSError, ValueError):
                group = int(entry.name, 16)
                if entry.is_dir(follow_symlinks=False):
                    try:
                        remove_directory(Path(entry.path))
                    except OSError as exc:
                        log.warning("disk cache: cannot remove the directory %s, where a "
                                    "group file belongs: %s", entry.path, exc)
                    continue
                slots = slots_in(entry.path, int(block_size))
                if slots:
                    mtime = entry.stat().st_mtime
                    found.append((mtime, (sub.name, group),
                                  Group(slots, int(block_size), mtime)))
                else:
                    os.unlink(entry.path)  # nothing in it (its blocks were dropped)
    found.sort(key=lambda f: f[0])
    if stale:
        log.info("disk cache %s: removed %d entries of an older cache format",
                 blocks.parent, stale)
    return [(where, group) for _, where, group in found]
