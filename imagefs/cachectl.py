"""``imagefs cache list|evict|purge``: which images a disk cache holds, and removing them.

Two sides, one set of answers:

- **through the daemon**, when a mount holds the cache: the control socket's
  ops ``cache-list``, ``cache-evict`` (``{"ids": [...]}``) and ``cache-purge``
  (``answer`` runs them on the mount's trio thread).  The daemon drops the
  images from its disk tier's index and files and from its memory tier, so
  the next read fetches them again.
- **on the directory**, when no mount holds it: under the cache's lock
  (``<cache dir>/lock``, the one a mount holds for its whole life), so that
  a mount starting meanwhile waits for nothing half removed: it is refused,
  as a second mount would be, until the command is done.

The daemon is found from ``--mount MOUNTPOINT`` (its registry entry) or from
the cache directory (``control.sock`` in it).  With a cache directory, the
lock decides: taken, the command works on the directory itself; held by a
mount, it asks that mount, and fails if it does not answer.

``evict`` is all or nothing: every id is checked before anything is removed,
so an unknown id (exit 1) or a malformed one (exit 2) leaves every image as
it was.  Directories of an older imagefs, which have no index naming their
image, are listed with an unknown id and removed only by ``purge``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from . import control
from .cache.directory import is_tagged
from .cache.inventory import CachedImage, read_cache, remove_image_dir
from .cachelock import holder, try_lock
from .errors import ConfigError, ImagefsError, ImageNotFound

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def image_ids(texts: list[str]) -> list[str]:
    """Image ids as given, lowercased; ``ConfigError`` for one that is not a UUID."""
    ids = []
    for text in texts:
        image_id = text.strip().lower()
        if not _UUID.fullmatch(image_id):
            raise ConfigError(f"not an image id: {text!r} (a UUID, as in imagefs cache list)")
        if image_id not in ids:
            ids.append(image_id)
    return ids


def _unknown(ids: list[str]) -> ImageNotFound:
    return ImageNotFound(f"not in the cache: {', '.join(ids)}; nothing was evicted")


def _entry(image: CachedImage) -> dict[str, Any]:
    return {"id": image.id, "name": image.name, "version": image.version, "dir": image.dir,
            "freed_bytes": image.cached_bytes}


# ---- the daemon's side (trio thread) --------------------------------------------------
async def answer(request: dict, memory, disk) -> dict:
    """The answer to a ``cache-*`` op, from the mount's tiers (``disk`` may be None)."""
    import trio

    op = request.get("op")
    if op == "cache-list":
        images = disk.images() if disk is not None else []
        return {"images": [i.as_json() for i in images]}
    if op == "cache-evict":
        raw = request.get("ids")
        if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
            return {"error": "cache-evict takes ids, a list of image ids"}
        ids = image_ids(raw)
        in_memory = memory.image_ids()
        dirs = {i: disk.dirs_of(i) if disk is not None else [] for i in ids}
        unknown = [i for i in ids if not dirs[i] and i not in in_memory]
        if unknown:
            return {"error": str(_unknown(unknown))}
        victims = [d for i in ids for d in dirs[i]]
    elif op == "cache-purge":
        ids = None
        victims = disk.all_dirs() if disk is not None else []
    else:
        return {"error": f"unknown request {op!r}"}
    cached = {i.dir: i for i in disk.images()} if disk is not None else {}
    entries = [_entry(cached.get(d) or CachedImage(d, **(disk.about(d) if disk else {})))
               for d in victims]
    if ids is None:
        memory.clear()
    else:
        for image_id in ids:
            memory.discard_image(image_id)
        entries += [{"id": i, "name": None, "version": None, "dir": None, "freed_bytes": 0}
                    for i in ids if not dirs[i]]
    if victims:
        await trio.to_thread.run_sync(disk.evict_dirs, victims)
    return {"evicted": entries}


# ---- the command's side (blocking) -----------------------------------------------------
def run(action: str, ids: list[str], cache_dir: Path | None, mountpoint: Path | None) -> dict:
    """Do ``action`` (list, evict, purge) through the daemon or on the directory; the
    answer, as the daemon gives it."""
    if action == "evict":
        ids = image_ids(ids)  # a malformed id fails before anything is asked
    fields: dict[str, Any] = {"ids": ids} if action == "evict" else {}
    if mountpoint is not None:
        return control.request(control.socket_for(mountpoint, None), f"cache-{action}",
                               **fields)
    assert cache_dir is not None
    blocks = _cache_blocks(cache_dir)
    fd = try_lock(cache_dir)
    if fd is None:  # a mount holds it: ask that mount
        try:
            return control.request(cache_dir / control.SOCKET_NAME, f"cache-{action}",
                                   **fields)
        except ConfigError as exc:
            raise ConfigError(f"cache directory {cache_dir} is in use by an imagefs mount "
                              f"(pid {holder(cache_dir)}) that does not answer: {exc}") \
                from None
    try:
        return _on_directory(action, ids, blocks)
    finally:
        os.close(fd)


def _cache_blocks(cache_dir: Path) -> Path:
    """``<cache dir>/blocks``; ``ConfigError`` for a directory that is no imagefs cache
    (nothing is created: a command that only looks must not make a cache)."""
    if not cache_dir.is_dir():
        raise ConfigError(f"{cache_dir}: no such cache directory (give --cache-dir, or "
                          "--mount MOUNTPOINT)")
    if not (is_tagged(cache_dir) or (cache_dir / "blocks").is_dir()):
        raise ConfigError(f"{cache_dir} is not an imagefs cache directory")
    return cache_dir / "blocks"


def _on_directory(action: str, ids: list[str], blocks: Path) -> dict:
    from .cache.disk import DiskCache

    images = read_cache(blocks, DiskCache._slots_in)
    if action == "list":
        return {"images": [i.as_json() for i in images if i.cached_bytes]}
    if action == "evict":
        unknown = [i for i in ids if not any(image.id == i for image in images)]
        if unknown:
            raise _unknown(unknown)
        images = [image for image in images if image.id in ids]
    for image in images:
        try:
            remove_image_dir(blocks, image.dir)
        except OSError as exc:
            raise ImagefsError(str(exc)) from None
    return {"evicted": [_entry(image) for image in images]}
