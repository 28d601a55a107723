"""The daemon's side of ``imagefs cache list|evict|purge``, and what both sides answer.

``answer`` runs the control socket's ops ``cache-list``, ``cache-evict``
(``{"ids": [...]}``) and ``cache-purge`` on the mount's trio thread.  The
daemon drops the images from its disk tier's index and files and from its
memory tier, so the next read fetches them again.  ``evict`` is all or
nothing: every id is checked before anything is removed.  The command, which
asks the daemon or works on the directory itself, is ``imagefs.commands.cache``.
"""

from __future__ import annotations

import re
from typing import Any

from .cache.inventory import CachedImage
from .errors import ConfigError, ImageNotFound

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


def not_cached(ids: list[str]) -> ImageNotFound:
    """The error of an ``evict`` that names images the cache does not hold."""
    return ImageNotFound(f"not in the cache: {', '.join(ids)}; nothing was evicted")


def evicted(image: CachedImage) -> dict[str, Any]:
    """What an answer says of an image it evicted."""
    return {"id": image.id, "name": image.name, "version": image.version, "dir": image.dir,
            "freed_bytes": image.cached_bytes}


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
            return {"error": str(not_cached(unknown))}
        victims = [d for i in ids for d in dirs[i]]
    elif op == "cache-purge":
        ids = None
        victims = disk.all_dirs() if disk is not None else []
    else:
        return {"error": f"unknown request {op!r}"}
    cached = {i.dir: i for i in disk.images()} if disk is not None else {}
    entries = [evicted(cached.get(d) or CachedImage(d, **(disk.about(d) if disk else {})))
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
