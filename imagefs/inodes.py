"""Inode numbers: derived from image ids, so that every daemon of a mount agrees.

The kernel keeps the inodes (and file handles) a daemon gave it for as long as
the mount lives, across the daemons that serve it in turn (``imagefs.holder``).
So an image's inode is a function of its id (``image_inode``), not a counter,
and the kernel's lookup counts need no bookkeeping (``forget`` is a no-op).

A successor daemon that is asked about an inode it has not seen finds its
image in the listing; an image that was reached by id without being listed
(an image shared with the project, say) is found through the record of such
ids kept in ``<cache dir>/inodes`` (``InodeTable.note_unlisted`` and
``InodeTable.recorded``).  An unwritable cache directory only loses that record.

Each image has four inodes: its directory (the base, a multiple of 4), its
``metadata.json``, its ``data`` and its by-name link (``KIND_*``).
"""

from __future__ import annotations

import errno
import hashlib
import logging
from pathlib import Path
from typing import Any

from .errors import FsError

log = logging.getLogger(__name__)

ROOT_INODE = 1
BY_NAME_INODE = 2
FIRST_IMAGE_INODE = 16
KIND_DIR, KIND_META, KIND_DATA, KIND_LINK = 0, 1, 2, 3
INODES_FILE = "inodes"


def image_inode(image_id: str) -> int:
    """The inode of an image's directory: 61 bits of the id's SHA-256, times 4 (its
    ``metadata.json``, ``data`` and by-name link are the next three)."""
    base = (int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "big") >> 3) << 2
    return base if base >= FIRST_IMAGE_INODE else base + FIRST_IMAGE_INODE


class InodeTable:
    """The images this daemon knows, by the inode of their directory; and the
    record of ids reached without being listed, for the next daemon."""

    def __init__(self, cache_dir: Path):
        self._path = cache_dir / INODES_FILE
        self._by_ino: dict[int, Any] = {}     # base inode -> the image (with .id, .ino)
        self._recorded: set[str] | None = None  # ids in the record, once read

    def add(self, image: Any) -> None:
        """Make ``image`` (its ``id`` and ``ino``) found by its inodes."""
        clash = self._by_ino.get(image.ino)
        if clash is not None:  # 61 bits of SHA-256: never seen, but never a wrong file
            raise FsError(errno.EIO, f"images {clash.id} and {image.id} share an inode")
        self._by_ino[image.ino] = image

    def knows(self, ino: int) -> bool:
        """Whether the image of inode ``ino`` (any of its four) is known here."""
        return ino - ino % 4 in self._by_ino

    def split(self, ino: int) -> tuple[Any, int]:
        """The image of a known inode and which of its inodes it is (``KIND_*``);
        ENOENT if it is not known."""
        base = ino - ino % 4
        image = self._by_ino.get(base)
        if image is None or ino - base > KIND_LINK:
            raise FsError(errno.ENOENT, f"no inode {ino}")
        return image, ino - base

    def note_unlisted(self, image_id: str) -> None:
        """Record an image reached by id without being listed, so that the next
        daemon can resolve its inodes; an unwritable cache directory only loses that."""
        recorded = self._read()
        if image_id in recorded:
            return
        recorded.add(image_id)
        try:
            with open(self._path, "a") as f:
                f.write(image_id + "\n")
        except OSError as exc:
            log.debug("cannot record inode of %s: %s", image_id, exc)

    def recorded(self, ino: int) -> str | None:
        """The recorded id whose image has inode ``ino``, if any."""
        base = ino - ino % 4
        for image_id in self._read():
            if image_inode(image_id) == base:
                return image_id
        return None

    def _read(self) -> set[str]:
        if self._recorded is None:
            try:
                text = self._path.read_text()
            except OSError:
                text = ""
            self._recorded = {w for w in text.split() if len(w) == 36 and w.count("-") == 4}
        return self._recorded
