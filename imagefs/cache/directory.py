"""Which directory is an imagefs cache: imagefs owns only what it created.

A cache directory is marked by a ``CACHEDIR.TAG`` (the Cache Directory
Tagging specification, https://bford.info/cachedir/: backup tools skip the
directory), whose first line is the specification's signature and whose
second names imagefs.  ``claim`` decides, before anything is created in the
directory:

- missing: created 0700 (with its parents), then tagged;
- tagged by imagefs: a cache, taken as it is;
- empty: adopted, tagged, its mode left as it is;
- holding only what imagefs wrote before caches were tagged: tagged.  That
  is ``blocks/`` and any of ``lock``, ``imagefs.log`` (files) and ``tmp/``
  (left alone, whatever it holds), where every entry of ``blocks/`` is
  imagefs's own by name and place: image directories
  (``<40 hex>.<block size>/``, holding group files named in hex, the
  ``image.json`` index and its temporary files), or the per-block layout of
  the first versions (``<2 hex>/<64 hex>``, each file starting with the
  ``IMGFSBK`` magic).  The cache's first scan removes what is stale in
  ``blocks/``, so one entry there that imagefs did not write is enough to
  refuse the directory;
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
import re
import stat
from pathlib import Path

from ..errors import ConfigError

TAG_NAME = "CACHEDIR.TAG"
SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
TAG = (f"{SIGNATURE}\n"
       "# This file is a cache directory tag created by imagefs (its disk block cache).\n"
       "# For information about cache directory tags see https://bford.info/cachedir/\n")
#: What a cache of the versions before tags held, and the kind of each entry.
_UNTAGGED_LAYOUT = {"blocks": stat.S_ISDIR, "lock": stat.S_ISREG,
                    "imagefs.log": stat.S_ISREG, "tmp": stat.S_ISDIR}
_IMAGE_DIR = re.compile(r"[0-9a-f]{40}\.[0-9]+")          # blocks/<image dir>/
_IN_IMAGE_DIR = re.compile(r"[0-9a-f]+|image\.json|\.image\.json\..+\.tmp")
_BLOCK_DIR = re.compile(r"[0-9a-f]{2}")                    # blocks/<ab>/<ab...>, per block
_BLOCK_FILE = re.compile(r"[0-9a-f]{64}")
_BLOCK_MAGIC = re.compile(rb"IMGFSBK[0-9]")


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
    if entries:
        why = _not_imagefs(root, entries)
        if why is not None:
            raise ConfigError(f"{root} is not empty and is not an imagefs cache (no "
                              f"{TAG_NAME}, and {why}); give --cache-dir a new or empty "
                              "directory")
    try:
        _write_tag(root)
    except FileExistsError:  # tagged at the same moment by another mount
        if not is_tagged(root):
            raise ConfigError(f"cannot tag cache directory {root}: another {TAG_NAME} "
                              "appeared") from None
    except OSError as exc:
        raise _unusable("tag", root, exc) from None


def _not_imagefs(root: Path, entries: set[str]) -> str | None:
    """None if ``root`` (not empty, untagged) holds only what imagefs wrote before
    caches were tagged (see the module docstring); else why not, naming the first
    entry imagefs did not write.  Only names, kinds and magics are read."""
    try:
        for name in sorted(entries):
            if name not in _UNTAGGED_LAYOUT or not _UNTAGGED_LAYOUT[name](
                    os.lstat(root / name).st_mode):
                return f"{name} is not imagefs's"
        if "blocks" not in entries:
            return "it has no blocks directory"
        for sub in sorted(os.scandir(root / "blocks"), key=lambda e: e.name):
            where = f"blocks/{sub.name}"
            if not sub.is_dir(follow_symlinks=False):
                return f"{where} is not imagefs's"
            if _IMAGE_DIR.fullmatch(sub.name):
                strangers = [e.name for e in os.scandir(sub.path)
                             if not (_IN_IMAGE_DIR.fullmatch(e.name)
                                     and e.is_file(follow_symlinks=False))]
            elif _BLOCK_DIR.fullmatch(sub.name):
                strangers = [e.name for e in os.scandir(sub.path)
                             if not (_BLOCK_FILE.fullmatch(e.name)
                                     and e.name.startswith(sub.name)
                                     and e.is_file(follow_symlinks=False)
                                     and _starts_with_magic(e.path))]
            else:
                return f"{where} is not imagefs's"
            if strangers:
                return f"{where}/{min(strangers)} is not imagefs's"
    except OSError as exc:
        raise ConfigError(f"cannot read cache directory {root}: {exc.strerror}") from None
    return None


def _starts_with_magic(path: str) -> bool:
    with open(path, "rb") as f:
        return _BLOCK_MAGIC.fullmatch(f.read(8)) is not None


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
