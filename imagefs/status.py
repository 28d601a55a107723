"""What ``imagefs status`` shows: the running mount's counters, from its daemon.

``snapshot`` runs in the daemon (on the trio thread) and returns plain JSON
for the control socket (``imagefs.control``).  Byte counts are what the daemon
fetched from the image's source (Glance, RBD, a file), which is what the
source sent for the blocks it delivered.  ``profile_replay`` is the figures
of the image's boot-profile replay on this mount (``BlockReader.warm``'s,
with ``finished``, and ``origin``: where the profile came from, ``local`` or
``published <profile image ids>``), or null when it has none.
"""

from __future__ import annotations

import time
from typing import Any



def snapshot(fs, blocks, memory, disk, service: str, started: float) -> dict[str, Any]:
    stats = blocks.stats
    held = disk.image_bytes() if disk is not None else {}
    images = []
    for image in fs.known_images():
        ref = image.ref
        key = blocks.key(ref, 0)
        cached = held.get(disk.image_dir(key), 0) if disk is not None else 0
        fetched = blocks.fetched_by_image.get(ref.id, 0)
        path = blocks.path(ref.id)
        replay = fs.profiles.replays.get(ref.id) if fs.profiles is not None else None
        if cached or fetched or path or replay:
            images.append({"id": ref.id, "name": image.record.get("name"), "size": ref.size,
                           "cached_bytes": cached, "fetched_bytes": fetched, "path": path,
                           "profile_replay": replay})
    return {
        "service": service,
        "uptime_s": round(time.monotonic() - started, 1),
        "fetched_bytes": stats["fetched_bytes"],
        "fetched_blocks": stats["fetched_blocks"],
        "memory_hits": stats["memory_hits"],
        "disk_hits": stats["disk_hits"],
        "streams": stats["streams"],
        "retries": stats["retries"],
        "disk_behind_blocks": blocks.unwritten_blocks,
        "disk_missed_blocks": stats["disk_missed"],
        "memory_bytes": memory.bytes_used,
        "cache_bytes": disk.bytes_used if disk is not None else 0,
        "cache_size": disk.max_bytes if disk is not None else 0,
        "reads": dict(fs.reads),
        "images": sorted(images, key=lambda i: i["id"]),
    }

