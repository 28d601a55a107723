"""The cache directory's lock: one mount, or one ``imagefs cache`` command, at a time.

``<cache dir>/lock`` is held with an exclusive ``flock`` for the whole life of
a mount, and for the length of an ``imagefs cache`` command that works on the
directory itself.  The holder writes its pid into the file, so that whoever is
refused can name it.  The lock is held through an open fd: it goes when the
process does, however it ends.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path

from .cache.directory import claim
from .errors import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = "lock"


def lock_cache_dir(cache_dir: Path) -> int | None:
    """Claim the cache directory, then hold ``<cache dir>/lock`` for the life of the
    mount (the fd is returned).  The lock is held through a read-only fd, so that the
    mount does not keep its cache's filesystem from being remounted read-only.  On a
    read-only cache directory the lock file is locked if it exists, and otherwise the
    mount goes without (None): nobody can write that cache, so sharing it is harmless."""
    claim(cache_dir)
    path = cache_dir / LOCK_NAME
    writable = True
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise ConfigError(f"cannot create {path}: {exc.strerror}; choose another "
                              "--cache-dir") from None
        writable = False
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        log.info("cache directory %s is read-only and has no lock file: mounting without "
                 "the lock", cache_dir)
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:  # EBADF: NFS locks need a writable fd
            if exc.errno != errno.EBADF or not writable:
                raise
            os.close(fd)
            fd = os.open(path, os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"cache directory {cache_dir} is in use by another imagefs mount "
                          f"(pid {holder}); give this mount its own --cache-dir") from None
    if not writable:
        log.info("cache directory %s is read-only: holding its lock without writing the pid",
                 cache_dir)
    return fd


def write_pid(cache_dir: Path) -> None:
    """Write this process's pid into the lock file (for a refused second mount to show);
    not on a read-only cache directory."""
    with contextlib.suppress(OSError):
        fd = os.open(cache_dir / LOCK_NAME, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)


def try_lock(cache_dir: Path) -> int | None:
    """The lock of an existing cache directory, taken (its fd, with this pid written),
    or None when a mount holds it.  For a command that works on the directory itself."""
    path = cache_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        raise ConfigError(f"cannot lock {path}: {exc.strerror}") from None
    with contextlib.suppress(OSError):  # as a mount does: a refused mount names us
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def holder(cache_dir: Path) -> str:
    """The pid the lock's holder wrote, or ``?``."""
    with contextlib.suppress(OSError):
        return (cache_dir / LOCK_NAME).read_text().strip() or "?"
    return "?"
