"""Files written whole or not at all: a temporary file beside the target, renamed
over it.  A reader sees the old content or the new, never a part.

``WholeFile`` is the one way imagefs writes a file whole, whether the bytes
are at hand (``write_whole``) or arrive over time (a download, an upload to
the embedded store).  The temporary file is 0600 while it fills (nobody
else reads a half-written or unchecked file) and gets its final mode just
before the rename; it is removed on any failure, and the target is then
left as it was.  With ``sync`` the file and the rename are on disk before
``commit`` returns (for files other hosts read, on NFS say, and for what
must survive a crash).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO


class WholeFile:
    """``with WholeFile(path) as f: f.write(...); f.commit()``: ``path`` is
    replaced at ``commit``; leaving the block without it (or with an error)
    removes the temporary file.

    The temporary file is made at construction (an ``OSError`` there means
    ``path`` cannot be written, before any work is done); ``directory`` holds
    it (default: ``path``'s own: the rename needs the same file system).
    """

    def __init__(self, path: str | os.PathLike, mode: int = 0o600, sync: bool = False,
                 directory: str | os.PathLike | None = None):
        self.path, self.mode, self.sync = Path(path), mode, sync
        fd, self.tmp = tempfile.mkstemp(dir=directory if directory is not None else
                                        self.path.parent, prefix=f".{self.path.name}.",
                                        suffix=".tmp")
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.committed = False

    def __enter__(self) -> "WholeFile":
        return self

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def finish(self) -> None:
        """Close the file with its final mode, synced if asked (``commit`` does
        this if it was not done: call it first to do it outside a lock)."""
        if not self.file.closed:
            with self.file as f:
                f.flush()
                os.fchmod(f.fileno(), self.mode)
                if self.sync:
                    os.fsync(f.fileno())

    def commit(self) -> None:
        """Rename the file over ``path`` (and sync the directory, with ``sync``)."""
        self.finish()
        os.replace(self.tmp, self.path)
        self.committed = True
        if self.sync:
            _fsync_dir(self.path.parent)

    def __exit__(self, *exc_info) -> None:
        if not self.committed:
            self.file.close()
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)


def write_whole(path: Path, data: bytes, mode: int = 0o600, sync: bool = False) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode``); ``sync``: on disk
    before this returns.  Raises ``OSError``; the old file is then left as it was."""
    with WholeFile(path, mode, sync) as f:
        f.write(data)
        f.commit()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
