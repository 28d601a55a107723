"""``imagefs cache list|evict|purge``: which images a disk cache holds, and removing them.

Two ways, one set of answers (``imagefs.cachectl``):

- **through the daemon**, when a mount holds the cache: the control socket's
  ``cache-*`` ops, answered on the mount's trio thread, so that the mount's
  tiers forget what is removed.
- **on the directory**, when no mount holds it: under the cache's lock
  (``<cache dir>/lock``, the one a mount holds for its whole life,
  ``imagefs.cachelock``), so that a mount starting meanwhile waits for
  nothing half removed: it is refused, as a second mount would be, until the
  command is done.

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

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .. import cachectl, control
from ..cache.directory import is_tagged
from ..cache.disk import DiskCache
from ..cache.inventory import read_cache, remove_image_dir
from ..cachelock import holder, try_lock
from ..config import default_cache_dir
from ..errors import ConfigError, ImagefsError
from ..output import print_table
from ..progress import human
from .options import quiet_options


def add_arguments(top, fmt: argparse.ArgumentParser) -> None:
    cache = top.add_parser("cache", help="which images the disk cache holds; remove them")
    sub = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    where = argparse.ArgumentParser(add_help=False)
    g = where.add_mutually_exclusive_group()
    g.add_argument("--cache-dir", metavar="DIR", help="the cache directory (default "
                   "$XDG_CACHE_HOME/imagefs); through its mount if one holds it")
    g.add_argument("--mount", metavar="MOUNTPOINT", help="through the mount at MOUNTPOINT")
    quiet_options(where)
    sub.add_parser("list", parents=[where, fmt], help="the images cached, and how much of each")
    p = sub.add_parser("evict", parents=[where, fmt],
                       help="remove images' blocks (all or none: an unknown id fails)")
    p.add_argument("ids", metavar="ID", nargs="+", help="image id")
    sub.add_parser("purge", parents=[where, fmt], help="remove every image's blocks")
    cache.set_defaults(run=run)


def run(args) -> int:
    mountpoint = Path(args.mount).absolute() if args.mount else None
    cache_dir = None if mountpoint else Path(args.cache_dir or default_cache_dir()).absolute()
    reply = ask(args.action, getattr(args, "ids", []), cache_dir, mountpoint)
    if args.format == "json":
        print(json.dumps(reply.get("images", reply.get("evicted")), indent=2, sort_keys=True))
    elif args.action == "list":
        print_table([(i["id"] or "-", i["name"] or "-", _short(i["version"]),
                      "-" if i["size"] is None else i["size"], i["cached_bytes"])
                     for i in reply["images"]], ("ID", "Name", "Version", "Size", "Cached"))
    else:
        for e in reply["evicted"]:
            print(f"evicted {e['id'] or e['dir']} ({e['name'] or '-'}): "
                  f"{human(e['freed_bytes'])}")
    return 0


def _short(version: str | None) -> str:
    """A version (a sha512 is 128 digits) short enough for a table."""
    if not version:
        return "-"
    return version if len(version) <= 16 else version[:12] + "…"


def ask(action: str, ids: list[str], cache_dir: Path | None, mountpoint: Path | None) -> dict:
    """Do ``action`` (list, evict, purge) through the daemon or on the directory; the
    answer, as the daemon gives it."""
    if action == "evict":
        ids = cachectl.image_ids(ids)  # a malformed id fails before anything is asked
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
    images = read_cache(blocks, DiskCache._slots_in)
    if action == "list":
        return {"images": [i.as_json() for i in images if i.cached_bytes]}
    if action == "evict":
        unknown = [i for i in ids if not any(image.id == i for image in images)]
        if unknown:
            raise cachectl.not_cached(unknown)
        images = [image for image in images if image.id in ids]
    for image in images:
        try:
            remove_image_dir(blocks, image.dir)
        except OSError as exc:
            raise ImagefsError(str(exc)) from None
    return {"evicted": [cachectl.evicted(image) for image in images]}
