"""Times set on ``data`` files with ``utime``: the one change the mount accepts.

Nova marks a base file in use by setting its times (``os.utime(base)`` at each
spawn and in each pass of its image cache manager), and ages unused ones by
their mtime.  So a ``data`` file's atime and mtime may be set; everything else
about the mount stays read-only.

Times are kept per image *version* (``imagefs.cache.keys.image_version``): an
image whose bytes change shows its own time (``created_at``) again.  With a
directory they are also kept on disk, one small JSON file per image
(``<dir>/<image id>.json``), so that they survive a remount: a remount must
not make an image Nova used an hour ago look as old as its ``created_at``
(Nova would remove its base link as unused at its next pass).  The files are
read once, when the mount starts; a write happens only at a ``utime``, in a
worker thread, and a failed one costs the persistence (logged), not the call.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import trio

from .atomic import write_whole

log = logging.getLogger(__name__)


class DataTimes:
    """(atime, mtime) in ns set on images' ``data`` files, by image id and version."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory
        self._times: dict[str, tuple[str, int, int]] = {}  # id -> (version, atime, mtime)
        if directory is not None:
            self._load(directory)

    def _load(self, directory: Path) -> None:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read the times set on data files from %s: %s", directory, exc)
            return
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                saved = json.loads((directory / name).read_text())
                self._times[name[:-5]] = (str(saved["version"]), int(saved["atime_ns"]),
                                          int(saved["mtime_ns"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring %s: %s", directory / name, exc)

    def get(self, image_id: str, version: str) -> tuple[int, int] | None:
        """(atime, mtime) set on this version of the image, or None."""
        saved = self._times.get(image_id)
        if saved is None or saved[0] != version:
            return None
        return saved[1], saved[2]

    async def set(self, image_id: str, version: str, atime_ns: int, mtime_ns: int) -> None:
        self._times[image_id] = (version, atime_ns, mtime_ns)
        if self.directory is not None:
            await trio.to_thread.run_sync(self._save, image_id, version, atime_ns, mtime_ns)

    def _save(self, image_id: str, version: str, atime_ns: int, mtime_ns: int) -> None:
        body = json.dumps({"id": image_id, "version": version, "atime_ns": atime_ns,
                           "mtime_ns": mtime_ns}).encode()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_whole(self.directory / f"{image_id}.json", body)
        except OSError as exc:
            log.warning("cannot keep the times set on %s's data across a remount: %s",
                        image_id, exc)
