"""A ``file://`` location read directly: Glance's file store on storage the host
shares (NFS), opt-in with ``--direct file``, like Nova's
``allowed_direct_url_schemes``.

The path is taken exactly as the location names it: it must be absolute,
with no symbolic link anywhere in it (``realpath`` changes nothing, and the
file is opened ``O_NOFOLLOW``), a regular file of the image's size.
Otherwise it is ``Unusable`` and the caller reads through the service.
"""

from __future__ import annotations

import os
import stat
import threading
import urllib.parse
from typing import Iterator

from ..errors import BackendUnavailable, Unusable
from . import FILE

CHUNK = 4 << 20


def path_of(url: str) -> str | None:
    """The local path of a ``file://`` URL (no host, or localhost), else None."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != FILE or parsed.netloc not in ("", "localhost"):
        return None
    return urllib.parse.unquote(parsed.path) or None


class FileSource:
    kind = FILE

    def __init__(self, fd: int, path: str, size: int):
        self.fd, self.path, self.size = fd, path, size
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileSource({self.path})"

    @classmethod
    def open(cls, url: str, size: int) -> "FileSource":
        path = path_of(url)
        if path is None or not os.path.isabs(path):
            raise Unusable(f"{url!r} is not a local absolute file:// location")
        if os.path.realpath(path) != os.path.normpath(path) or \
                os.path.normpath(path) != path:
            raise Unusable(f"{path}: the location must name the file itself, "
                           "with no symbolic link or '..' in its path")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise Unusable(f"cannot open {path}: {exc.strerror}") from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            os.close(fd)
            raise Unusable(f"{path} is not a regular file of the image's {size} bytes")
        return cls(fd, path, size)

    def read(self, offset: int, length: int, timeout: float | None = None) -> bytes:
        length = max(0, min(length, self.size - offset))
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as exc:
            raise BackendUnavailable(f"{self.path}: read at {offset}: {exc.strerror}") from exc
        if len(data) != length:
            raise BackendUnavailable(f"{self.path}: read at {offset} gave {len(data)} of "
                                     f"{length} bytes (the file changed?)")
        return data

    def stream(self, offset: int, end: int | None = None,
               timeout: float | None = None) -> Iterator[bytes]:
        end = self.size if end is None else min(end, self.size)
        while offset < end:
            data = self.read(offset, min(CHUNK, end - offset))
            offset += len(data)
            yield data

    def close(self) -> None:
        with self._lock:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
