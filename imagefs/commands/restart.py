"""``imagefs restart MOUNTPOINT``: hand a mount over to a new daemon of the code now installed.

The mount's holder (``imagefs.holder``) starts the new daemon on ``SIGHUP``;
once it is ready the old one stops reading, answers what it had read and
exits.  Nothing is unmounted: open files go on, and the disk cache, the boot
profiles and the mount's settings (its command line) carry over.  The command
returns once the new daemon answers ``imagefs status``, and says its pid.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ..control import request
from ..errors import ConfigError, ImagefsError
from .options import mount_socket, quiet_options, socket_option

WAIT = 60.0


def add_arguments(top) -> None:
    p = top.add_parser("restart", help="hand a mount over to a new daemon (no unmount)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    socket_option(p)
    p.add_argument("--timeout", type=float, default=WAIT, metavar="SECONDS",
                   help=f"how long to wait for the new daemon (default {WAIT:.0f})")
    quiet_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    path = mount_socket(Path(args.mountpoint).absolute(), args.cache_dir)
    before = request(path, "status")
    holder = before.get("holder_pid")
    if not holder:
        raise ConfigError(f"{args.mountpoint} has no holder (mounted with IMAGEFS_NO_HOLDER, "
                          "or by an older imagefs): it cannot be restarted without an unmount")
    os.kill(holder, signal.SIGHUP)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            now = request(path, "status")
        except (ConfigError, ImagefsError):
            continue  # between the two daemons
        if now.get("pid") != before.get("pid") and now.get("takeovers", 0) > \
                before.get("takeovers", 0):
            print(f"imagefs: {args.mountpoint} is served by daemon {now['pid']} "
                  f"(imagefs {now['version']}; takeover {now['takeovers']})")
            return 0
    raise ImagefsError(f"no new daemon serves {args.mountpoint} {args.timeout:.0f}s after the "
                       f"restart; see the mount's log")
