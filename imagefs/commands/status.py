"""``imagefs status MOUNTPOINT``: what a running mount is doing.

The command asks the mount's daemon over its control socket
(``imagefs.control``) and prints the answer, which the daemon builds
(``imagefs.status.snapshot``): a table of the mount's counters and one of the
images it has touched, or with ``-f json`` the whole answer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..control import request
from ..output import print_table
from .options import mount_socket, quiet_options, socket_option

#: The counters of the first table, in order.
FIELDS = ("pid", "version", "started", "takeovers", "service", "uptime_s", "fetched_bytes", "memory_hits", "disk_hits", "memory_bytes",
          "cache_bytes", "cache_size", "disk_behind_blocks", "disk_missed_blocks")


def add_arguments(top, fmt: argparse.ArgumentParser) -> None:
    p = top.add_parser("status", parents=[fmt], help="what a running mount is doing")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    socket_option(p)
    quiet_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    path = mount_socket(Path(args.mountpoint).absolute(), args.cache_dir)
    status = request(path, "status")
    if args.format == "json":
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print_table([(k, status[k]) for k in FIELDS if k in status],  # an older daemon's: fewer
                ("Field", "Value"))
    print_table([(i["id"], i["name"], i["size"], i["cached_bytes"], i["fetched_bytes"],
                  i["path"], (i["profile_replay"] or {}).get("origin") or "none")
                 for i in status["images"]],
                ("ID", "Name", "Size", "Cached", "Fetched", "Path", "Profile"))
    return 0
