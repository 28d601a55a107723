"""The mount point: free, mounted, or left behind dead by a daemon that died.

A FUSE mount whose daemon died (``kill -9``, a crash, the OOM killer) stays
in the mount table, and every call the kernel passes to the daemon answers
ENOTCONN ("Transport endpoint is not connected").  ``stat`` of its root may
still succeed for as long as the kernel trusts the root's attributes (the
mount's ``--list-ttl``), so a FUSE mount is probed with ``statvfs`` as well,
which the kernel always passes to the daemon.  What is mounted, and its type
(imagefs's is ``fuse.imagefs``), comes from ``/proc/self/mountinfo``.

``prepare`` readies a mount point for ``imagefs mount``: a dead imagefs mount
is lazily unmounted (``fusermount3 -u -z``); anything else mounted there is
refused with the command that clears it.  ``unmount`` is what ``imagefs
umount`` runs.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from .errors import ConfigError, ImagefsError

log = logging.getLogger(__name__)

IMAGEFS_FSTYPE = "fuse.imagefs"
MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclasses.dataclass(frozen=True)
class MountState:
    """What is mounted at a path: ``fstype`` None for nothing; ``dead`` for a
    FUSE mount whose daemon is gone."""

    fstype: str | None
    dead: bool = False


def mount_type(path: Path, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the topmost mount at ``path`` (symlinks resolved), or None
    if nothing is mounted there or the mount table cannot be read."""
    target = os.path.realpath(path)  # lstat errors (a dead mount) leave a name as it is
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:  # later lines are mounted on top of earlier ones
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        if _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4]) == target:
            found = fields[fields.index("-", 6) + 1]
    return found


def _not_connected(path: Path) -> bool:
    for probe in (os.statvfs, os.stat):
        try:
            probe(path)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                return True
    return False


def probe(path: Path) -> MountState:
    """What is mounted at ``path``; only a FUSE mount is asked whether it is alive."""
    fstype = mount_type(path)
    if fstype is None:
        return MountState(None)
    return MountState(fstype, fstype.startswith("fuse") and _not_connected(path))


def unmount_command(path: Path, lazy: bool = False) -> list[str]:
    """``fusermount3 -u [-z] PATH``, or ``umount [-l] PATH`` without fusermount."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        return [tool, "-u", *(["-z"] if lazy else []), str(path)]
    return ["umount", *(["-l"] if lazy else []), str(path)]


def unmount(path: Path, lazy: bool = False) -> None:
    """Unmount ``path`` (detached at once with ``lazy``); ImagefsError with the
    tool's message if it fails."""
    proc = subprocess.run(unmount_command(path, lazy), capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise ImagefsError(f"cannot unmount {path}: {reason}")


def prepare(path: Path, nonempty: bool = False) -> None:
    """Make ``path`` ready for a new imagefs mount, or ConfigError saying why not.

    - a dead imagefs mount is unmounted lazily, with one warning in the log;
    - a dead FUSE mount of another filesystem is refused, naming
      ``fusermount3 -u PATH``; a live mount is refused, naming
      ``imagefs umount PATH`` if it is imagefs's;
    - ``path`` must then exist and be a directory, and be empty unless
      ``nonempty`` (a mount would hide what is in it).
    """
    state = probe(path)
    if state.dead and state.fstype == IMAGEFS_FSTYPE:
        unmount(path, lazy=True)
        log.warning("%s was a dead imagefs mount (its daemon had died); unmounted it", path)
    elif state.dead:
        raise ConfigError(f"{path} is a dead {state.fstype} mount (its daemon is gone); "
                          f"clear it with: fusermount3 -u {path}")
    elif state.fstype == IMAGEFS_FSTYPE:
        raise ConfigError(f"{path} is already an imagefs mount; unmount it first with: "
                          f"imagefs umount {path}")
    elif state.fstype is not None or os.path.ismount(path):
        raise ConfigError(f"{path} is already a mount point"
                          + (f" ({state.fstype})" if state.fstype else ""))
    try:
        is_dir = path.is_dir()
        exists = is_dir or path.exists()
    except OSError as exc:  # e.g. inside a dead mount
        raise ConfigError(f"mount point {path}: {exc.strerror}") from None
    if not exists:
        raise ConfigError(f"mount point {path} does not exist")
    if not is_dir:
        raise ConfigError(f"mount point {path} is not a directory")
    if not nonempty:
        try:
            with os.scandir(path) as entries:
                occupied = next(entries, None) is not None
        except OSError as exc:
            raise ConfigError(f"mount point {path}: {exc.strerror}") from None
        if occupied:
            raise ConfigError(f"mount point {path} is not empty (a mount would hide what is "
                              "in it); give --nonempty to mount over it anyway")
