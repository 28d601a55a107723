"""Nova's base files as links into the mount (``imagefs mount --nova-base-dir DIR``).

Nova's libvirt driver (``images_type = qcow2``) downloads an image into
``<instances_path>/_base/<sha1 of the image id>`` before the image's first
boot on a host, and only when that file is missing
(``imagebackend.Qcow2.create_image``); each instance disk is then a qcow2
overlay backed by it.  With ``DIR/<sha1(id)>`` a symbolic link to
``MOUNT/<id>/data``, Nova finds its base file present, downloads nothing, and
the guest boots from the mount, reading only what it reads.

``BaseLinks.sync(ids)`` keeps ``DIR`` in step with the images the mount lists:
a link is made for each image that has none, and a link of ours whose image
is gone is removed.  A link is *ours* only if it is a symbolic link named
``sha1(<uuid>)`` whose target is exactly ``MOUNT/<uuid>/data`` for this
mount; nothing else in ``DIR`` is ever touched (Nova's own downloads, resized
``<sha1>_<size>`` copies, swap and ephemeral bases, lock files, links of
other mounts or made by hand).  A name already taken by anything is left as
it is: where Nova downloaded an image itself before the mount came, Nova's
file stays Nova's.

The daemon runs ``keep_links``: every ``interval`` seconds it takes the
mount's listing (refreshed from the image service once per ``--list-ttl``)
and syncs.  So a link that Nova's image cache manager removes (an unused base
file older than ``remove_unused_original_minimum_age_seconds``) is made again
within ``interval``: the link costs no space, the blocks behind it are the
mount's cache (which has its own bound), and without it the next spawn of
that image would download the whole image.  Links stay at unmount: one left
dangling by a stopped mount makes Nova download the image itself, as it
would without imagefs (it renames its download over the link), and a
restarted mount adopts its links as they are.

Blocking calls (``os.listdir``, ``symlink``) run in a worker thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import trio

from .errors import ConfigError
from .ids import is_image_id

log = logging.getLogger(__name__)

_SHA1 = re.compile(r"[0-9a-f]{40}")
#: Seconds between two syncs of the links with the mount's listing.
INTERVAL = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nova-base-dir", metavar="DIR",
                        help="keep DIR/<sha1(image id)> a link to MOUNT/<id>/data for every "
                             "image the mount lists (Nova's <instances_path>/_base: Nova then "
                             "boots from the mount instead of downloading)")


def base_name(image_id: str) -> str:
    """The name Nova gives an image's base file (``imagecache.get_cache_fname``)."""
    return hashlib.sha1(image_id.encode("utf-8")).hexdigest()


def check_base_dir(path: str, allow_other: bool) -> Path:
    """The directory of ``--nova-base-dir``, absolute; ConfigError unless it is an
    existing directory this process may write (it is Nova's: not created here, so
    that its owner stays Nova's user).  Without ``allow_other`` a warning: only
    the mount's user may then read through the links, not libvirt, qemu or Nova."""
    base = Path(path).absolute()
    if not base.is_dir():
        raise ConfigError(f"--nova-base-dir {base}: no such directory (create it as Nova's "
                          "user: <instances_path>/_base)")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"--nova-base-dir {base}: not writable by this user")
    if not allow_other:
        log.warning("--nova-base-dir without --allow-other: libvirt, qemu and Nova cannot "
                    "read through the links unless they run as this mount's user")
    return base


@dataclasses.dataclass
class Synced:
    made: list[str] = dataclasses.field(default_factory=list)     # image ids
    removed: list[str] = dataclasses.field(default_factory=list)  # image ids


class BaseLinks:
    """The links of one mount in one base directory."""

    def __init__(self, base_dir: Path, mountpoint: Path):
        self.base_dir, self.mountpoint = Path(base_dir), Path(mountpoint)
        self._target = re.compile(re.escape(str(self.mountpoint)) + "/([^/]+)/data")

    def target(self, image_id: str) -> str:
        return str(self.mountpoint / image_id / "data")

    def owner(self, name: str) -> str | None:
        """The image id if ``DIR/name`` is one of this mount's links, else None."""
        if not _SHA1.fullmatch(name):
            return None
        try:
            target = os.readlink(self.base_dir / name)
        except OSError:  # not a link, or gone
            return None
        match = self._target.fullmatch(target)
        if match is None or not is_image_id(match[1]) or base_name(match[1]) != name:
            return None
        return match[1]

    def sync(self, image_ids: Iterable[str]) -> Synced:
        """Make the missing links of ``image_ids``; remove ours of other images."""
        wanted = {base_name(i): i for i in image_ids if is_image_id(i)}
        done = Synced()
        present = set(os.listdir(self.base_dir))
        for name in present:
            image_id = self.owner(name)
            if image_id is not None and name not in wanted:
                try:
                    os.unlink(self.base_dir / name)
                except FileNotFoundError:
                    continue
                done.removed.append(image_id)
        for name, image_id in wanted.items():
            if name in present:
                continue
            try:
                os.symlink(self.target(image_id), self.base_dir / name)
            except FileExistsError:  # made meanwhile (by Nova): Nova's
                continue
            done.made.append(image_id)
        return done


async def keep_links(links: BaseLinks, listing, interval: float = INTERVAL) -> None:
    """Sync ``links`` with ``await listing()`` (the mount's image ids) every
    ``interval`` seconds, until cancelled.  A failed listing or sync is logged and
    tried again next time; nothing is removed on a listing that failed."""
    failing = None
    while True:
        try:
            ids = await listing()
            done = await trio.to_thread.run_sync(links.sync, list(ids))
        except Exception as exc:  # noqa: BLE001 (the daemon must go on; said once per cause)
            if str(exc) != failing:
                log.warning("cannot keep Nova's base links in %s: %s", links.base_dir, exc)
                failing = str(exc)
        else:
            failing = None
            for image_id in done.made:
                log.info("Nova base link made: %s -> %s", base_name(image_id),
                         links.target(image_id))
            for image_id in done.removed:
                log.info("Nova base link removed (image %s gone): %s", image_id,
                         base_name(image_id))
        await trio.sleep(interval)

