"""Which directory is an imagefs cache: imagefs owns only what it created.

A cache directory is marked by a ``CACHEDIR.TAG`` (the Cache Directory
Tagging specification, https://bford.info/cachedir/: backup tools skip the
directory), whose first line is the specification's signature and whose
second names imagefs.  ``claim`` decides, before anything is created in the
directory:

- missing: created 0700 (with its parents), then tagged;
- tagged by imagefs: a cache, taken as it is;
- empty: adopted, tagged, its mode left as it is;
- holding only what imagefs wrote before caches were tagged (``blocks/``
  and any of ``lock``, ``imagefs.log``, ``tmp``): tagged;
- anything else (a file, a directory with other things in it, a tag of
  another program's): refused with a ``ConfigError`` saying why, and left
  as it was.

A directory that cannot be created or tagged (a full or read-only
filesystem, no permission) is refused with the reason.  Inside a tagged
directory the cache may clean up its own files (see ``disk.py``).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from ..errors import ConfigError

TAG_NAME = "CACHEDIR.TAG"
SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
TAG = (f"{SIGNATURE}\n"
       "# This file is a cache directory tag created by imagefs (its disk block cache).\n"
       "# For information about cache directory tags see https://bford.info/cachedir/\n")
#: What a cache of the version before tags held (``blocks`` among them, a directory).
_UNTAGGED_LAYOUT = {"blocks", "lock", "imagefs.log", "tmp"}


def is_tagged(root: Path) -> bool:
    """Whether ``root`` holds a ``CACHEDIR.TAG`` written by imagefs."""
    try:
        with open(root / TAG_NAME, "rb") as f:
            head = f.read(1024).decode(errors="replace")
    except OSError:
        return False
    return head.startswith(SIGNATURE) and "imagefs" in head


def claim(root: Path) -> None:
    """Make ``root`` an imagefs cache directory (see the module docstring), or raise
    ``ConfigError``.  Idempotent: a tagged directory is only read."""
    try:
        root.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        _adopt(root)
        return
    except OSError as exc:
        raise _unusable("create", root, exc) from None
    try:
        os.chmod(root, 0o700)  # whatever the umask: it is ours
        _write_tag(root)
    except OSError as exc:
        with contextlib.suppress(OSError):
            root.rmdir()
        raise _unusable("create", root, exc) from None


def _adopt(root: Path) -> None:
    if not root.is_dir():
        raise ConfigError(f"cache directory {root} exists and is not a directory")
    if is_tagged(root):
        return
    try:
        entries = set(os.listdir(root))
    except OSError as exc:
        raise ConfigError(f"cannot read cache directory {root}: {exc.strerror}") from None
    if TAG_NAME in entries:
        raise ConfigError(f"{root} is another program's cache (its {TAG_NAME} does not name "
                          "imagefs); give imagefs a directory of its own with --cache-dir")
    untagged_cache = entries <= _UNTAGGED_LAYOUT and (root / "blocks").is_dir()
    if entries and not untagged_cache:
        raise ConfigError(f"{root} is not empty and is not an imagefs cache (it has no "
                          f"{TAG_NAME}); give --cache-dir a new or empty directory")
    try:
        _write_tag(root)
    except FileExistsError:  # tagged at the same moment by another mount
        if not is_tagged(root):
            raise ConfigError(f"cannot tag cache directory {root}: another {TAG_NAME} "
                              "appeared") from None
    except OSError as exc:
        raise _unusable("tag", root, exc) from None


def _unusable(doing: str, root: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot {doing} cache directory {root}: {exc.strerror}; "
                       "choose another with --cache-dir")


def _write_tag(root: Path) -> None:
    """Write the tag whole, or leave none."""
    path = root / TAG_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        data = TAG.encode()
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
