"""``imagefs prefetch``: fill a running mount's cache before a boot storm.

``imagefs prefetch MOUNTPOINT ID|NAME... [--profile-only]`` asks the mount's
daemon, over its control socket (``imagefs.control``), to warm each image:
the whole image, or only its boot profile (``imagefs.profiles``).  The
daemon runs the warm-up as a job (``imagefs.prewarm.Warmer``), and the
command polls it: a progress line on a terminal, one line of figures per
image at the end.  Warmed blocks are in the disk tier, so they survive a
remount.

It is the operator's answer to "a storm is coming": Nova's aggregate image
pre-caching downloads whole images; ``--profile-only`` fetches only what a
boot reads.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .. import control
from ..errors import ConfigError
from ..ids import is_image_id
from ..progress import ProgressLine, human
from .options import mount_socket

#: Seconds between two polls of a job.
POLL = 0.25


def add_arguments(top) -> None:
    p = top.add_parser("prefetch", help="fill a running mount's cache with images, or only "
                                        "with what their boots read")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("images", nargs="+", metavar="ID|NAME")
    p.add_argument("--profile-only", action="store_true",
                   help="only the blocks of each image's boot profile")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="the mount's cache directory (if its socket is not registered)")
    p.set_defaults(run=run)


def image_id(mountpoint: Path, text: str) -> str:
    """An image id, or the id a ``by-name`` link of the mount names."""
    if is_image_id(text):
        return text
    try:
        target = os.readlink(mountpoint / "by-name" / text)
    except OSError:
        raise ConfigError(f"{text!r} is neither an image id nor a name under "
                          f"{mountpoint}/by-name") from None
    return os.path.basename(target)


def _done_bytes(job: dict) -> int:
    return job["bytes"] * job["done"] // job["blocks"] if job["blocks"] else 0


def run(args) -> int:
    mountpoint = Path(args.mountpoint)
    sock = mount_socket(mountpoint, args.cache_dir)
    ids = [image_id(mountpoint, text) for text in args.images]
    failed = 0
    for image in ids:
        job = control.request(sock, "prefetch", image=image, profile_only=args.profile_only)
        line = ProgressLine("prefetch") if sys.stderr.isatty() else None
        while not job["finished"]:
            if line is not None:
                line(image, _done_bytes(job), job["bytes"] or None)
            time.sleep(POLL)
            job = control.request(sock, "prefetch-status", job=job["job"])
        if line is not None:
            line(image, _done_bytes(job), job["bytes"] or None)
            line.finish()
        rate = job["fetched"] / job["seconds"] if job["seconds"] > 0 else 0
        print(f"{image}: {job['blocks']} blocks ({human(job['bytes'])}"
              f"{', its boot profile' if args.profile_only else ''}): "
              f"{job['cached']} cached already, {human(job['fetched'])} fetched in "
              f"{job['seconds']:.1f} s ({human(rate)}/s)"
              + (f", {job['failed']} failed" if job["failed"] else ""))
        if job["failure"] or job["failed"]:
            print(f"imagefs: prefetch of {image} failed: "
                  f"{job['failure'] or str(job['failed']) + ' blocks could not be fetched'}",
                  file=sys.stderr)
            failed += 1
    return 1 if failed else 0
