"""Files written whole or not at all: a temporary file beside the target, renamed
over it.  A reader sees the old content or the new, never a part."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def write_whole(path: Path, data: bytes, mode: int = 0o600, sync: bool = False) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode``); ``sync``: on disk before the
    rename (for files other hosts read, on NFS say).  Raises ``OSError``; the old
    file is then left as it was."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with contextlib.closing(os.fdopen(fd, "wb", closefd=True)) as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)  # whatever the umask took off
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
