"""imagefs.status: the daemon's answer to ``imagefs status``, from its parts (fakes)."""

import json
import time
from types import SimpleNamespace

from imagefs.cache import DiskCache
from imagefs.cache.keys import BlockKey
from imagefs.status import snapshot

A, B, C = ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222",
           "33333333-3333-4333-8333-333333333333")
BS = 64 << 10
STATS = dict(fetched_bytes=300, fetched_blocks=3, memory_hits=4, disk_hits=5, streams=1,
             retries=2, disk_missed=0)


def parts(tmp_path, with_disk=True):
    images = [SimpleNamespace(ref=SimpleNamespace(id=i, version="v" + i[0], size=1000 * n),
                              record={"name": f"image-{n}"})
              for n, i in enumerate((A, B, C), 1)]
    fs = SimpleNamespace(known_images=lambda: images, reads={"requests": 7, "bytes": 700},
                         profiles=SimpleNamespace(replays={B: {"finished": True}}))
    blocks = SimpleNamespace(stats=STATS, block_size=BS, fetched_by_image={A: 300},
                             path=lambda image_id: "rbd" if image_id == A else None,
                             unwritten_blocks=0)
    memory = SimpleNamespace(bytes_used=123)
    disk = None
    if with_disk:
        disk = DiskCache(tmp_path / "cache", 1 << 30)
        disk.store(BlockKey(A, "v1", BS, 0), b"a" * 1000)
        disk.close()
    return fs, blocks, memory, disk


def test_images_with_anything_to_show_and_the_mounts_counters(tmp_path):
    fs, blocks, memory, disk = parts(tmp_path)
    started = time.monotonic() - 5
    status = snapshot(fs, blocks, memory, disk, "glance at http://g", started)
    json.dumps(status)  # plain JSON, for the control socket
    assert [i["id"] for i in status["images"]] == [A, B]  # C: nothing cached, fetched, replayed
    a, b = status["images"]
    assert a == {"id": A, "name": "image-1", "size": 1000,
                 "cached_bytes": sum(disk.image_bytes().values()),
                 "fetched_bytes": 300, "path": "rbd", "profile_replay": None}
    assert a["cached_bytes"] >= 1000
    assert b["profile_replay"] == {"finished": True} and b["cached_bytes"] == 0
    assert status["service"] == "glance at http://g" and 5 <= status["uptime_s"] < 60
    assert status["fetched_bytes"] == 300 and status["memory_bytes"] == 123
    assert status["cache_bytes"] == disk.bytes_used > 0 and status["cache_size"] == 1 << 30
    assert status["reads"] == {"requests": 7, "bytes": 700}


def test_without_a_disk_tier_nothing_is_cached_on_disk(tmp_path):
    fs, blocks, memory, _ = parts(tmp_path, with_disk=False)
    status = snapshot(fs, blocks, memory, None, "", time.monotonic())
    assert status["cache_bytes"] == status["cache_size"] == 0
    assert [i["cached_bytes"] for i in status["images"]] == [0, 0]
