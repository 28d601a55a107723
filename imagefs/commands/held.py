"""``imagefs mount`` through the holder (``imagefs.holder``): the mount outlives its daemon.

The command checks what it can (the mount point, the service, the cache
directory's lock), then starts the holder with the lock's descriptor: in the
foreground the holder replaces this process (so that it is a systemd unit's
main process); in the background it starts in a session of its own, logging to
the log file, and the command waits for the first daemon's word as it waits
for a forked daemon's (``imagefs.daemon``).  The holder starts each serving
daemon as this same command line, run again with ``--foreground``.

``IMAGEFS_NO_HOLDER=1`` mounts as before the holder existed: one process,
which the mount does not outlive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .. import holder
from ..daemon import _wait_for_word

NO_HOLDER_ENV = "IMAGEFS_NO_HOLDER"
LOG_ENV = "IMAGEFS_DAEMON_LOG"  # the holder's daemons log there (a background mount)


def enabled() -> bool:
    return not os.environ.get(NO_HOLDER_ENV)


def daemon_command(argv: list[str]) -> list[str]:
    """The command line the holder starts each serving daemon with."""
    return [sys.executable, "-m", "imagefs", *argv, "--foreground"]


def _write_pid(cache_dir: Path, pid: int) -> None:
    try:
        fd = os.open(cache_dir / "lock", os.O_WRONLY | os.O_TRUNC)
    except OSError:
        return  # a read-only cache directory
    try:
        os.write(fd, f"{pid}\n".encode())
    finally:
        os.close(fd)


def start(args, config, mountpoint: Path, lock_fd: int | None, log_file: Path | None) -> int:
    # Not "ro": the kernel would refuse utime on data files, which Nova's image cache
    # needs (imagefs.times); every other change is refused by the daemon (EROFS).
    spec = {"mountpoint": str(mountpoint),
            "options": ["default_permissions", *(["allow_other"]
                                                 if config.allow_other else [])],
            "daemon": daemon_command(args.argv)}
    env = dict(os.environ)
    if log_file is not None:
        env[LOG_ENV] = str(log_file)
    fds = [lock_fd] if lock_fd is not None else []
    command = [sys.executable, "-I", holder.__file__, str(mountpoint)]  # ps shows which
    if log_file is None:  # the foreground: the holder becomes this process
        _write_pid(config.cache_dir, os.getpid())
        for fd in fds:
            os.set_inheritable(fd, True)
        env[holder.SPEC_ENV] = json.dumps(spec)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, command, env)
    read_end, write_end = os.pipe()
    spec["ready_fd"] = write_end
    env[holder.SPEC_ENV] = json.dumps(spec)
    log = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        proc = subprocess.Popen(command, env=env, pass_fds=[write_end, *fds],
                                start_new_session=True, umask=0o077, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=log)
    finally:
        os.close(log)
        os.close(write_end)
    _write_pid(config.cache_dir, proc.pid)
    return _wait_for_word(read_end, log_file)
