"""``imagefs prefetch``: fill a running mount's cache before a boot storm.

``imagefs prefetch MOUNTPOINT ID|NAME... [--profile-only]`` asks the mount's
daemon, over its control socket (``imagefs.control``), to warm each image:
the whole image, or only its boot profile (``imagefs.profiles``).  The
daemon runs the warm-up (``BlockReader.warm``: ranged reads after readers,
blocks already cached cost nothing) as a job, and the command polls it: a
progress line on a terminal, one line of figures per image at the end.
Warmed blocks are in the disk tier, so they survive a remount.

It is the operator's answer to "a storm is coming": Nova's aggregate image
pre-caching downloads whole images; ``--profile-only`` fetches only what a
boot reads.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import time
from pathlib import Path

import trio

from . import control
from .errors import ConfigError, ImagefsError
from .ids import is_image_id
from .progress import ProgressLine, human

log = logging.getLogger(__name__)

#: Seconds between two polls of a job.
POLL = 0.25
#: Seconds between two progress lines in the mount's log.
LOG_EVERY = 5.0


class Warmer:
    """The daemon's side: warm-up jobs, by number (on the trio thread)."""

    OPS = ("prefetch", "prefetch-status")

    def __init__(self, fs, blocks, profiles, nursery: trio.Nursery):
        self.fs, self.blocks, self.profiles, self.nursery = fs, blocks, profiles, nursery
        self.jobs: dict[int, dict] = {}
        self._numbers = itertools.count(1)

    async def handle(self, request: dict) -> dict:
        if request["op"] == "prefetch-status":
            job = self.jobs.get(request.get("job"))
            if job is None:
                return {"error": f"no prefetch job {request.get('job')!r}"}
            return job
        image_id = str(request.get("image", ""))
        if not is_image_id(image_id):
            return {"error": f"not an image id: {image_id!r}"}
        image = await self.fs.image_ref(image_id)
        if request.get("profile_only"):
            profile = await trio.to_thread.run_sync(self.profiles.store.load, image.id,
                                                    image.version)
            if profile is None:
                return {"error": f"image {image.id} has no boot profile in "
                                 f"{self.profiles.store.root} (boot it once on a mount "
                                 "that records, or prefetch the whole image)"}
            ranges = list(profile.byte_ranges())
        else:
            ranges = [(0, image.size)]
        number = next(self._numbers)
        job = self.jobs[number] = {"job": number, "image": image.id, "finished": False,
                                   "failure": None, "blocks": 0, "bytes": 0, "done": 0,
                                   "cached": 0, "fetched": 0, "failed": 0, "seconds": 0.0}
        self.nursery.start_soon(self._run, job, image, ranges)
        return job

    async def _run(self, job: dict, image, ranges) -> None:
        began = trio.current_time()
        logged = [began]

        def progress(figures: dict) -> None:
            job.update(figures, seconds=trio.current_time() - began)
            if trio.current_time() - logged[0] >= LOG_EVERY:
                logged[0] = trio.current_time()
                log.info("prefetch of image %s: %d of %d blocks, %s fetched", image.id,
                         figures["done"], figures["blocks"], human(figures["fetched"]))

        try:
            figures = await self.blocks.warm(image, ranges, progress)
            job.update(figures)
        except ImagefsError as exc:
            job["failure"] = str(exc)
        except Exception as exc:  # a bug: the job fails, the mount stays
            log.exception("prefetch of image %s failed", image.id)
            job["failure"] = f"internal error: {exc!r}"
        job["seconds"] = trio.current_time() - began
        job["finished"] = True
        log.info("prefetch of image %s done in %.1f s: %d blocks, %d cached already, %s "
                 "fetched, %d failed", image.id, job["seconds"], job["blocks"], job["cached"],
                 human(job["fetched"]), job["failed"])


# ---- the command's side (blocking) ---------------------------------------------------
def add_arguments(top, fmt) -> None:
    p = top.add_parser("prefetch", help="fill a running mount's cache with images, or only "
                                        "with what their boots read")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("images", nargs="+", metavar="ID|NAME")
    p.add_argument("--profile-only", action="store_true",
                   help="only the blocks of each image's boot profile")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="the mount's cache directory (if its socket is not registered)")
    p.set_defaults(run=run_prefetch)


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


def run_prefetch(args) -> int:
    mountpoint = Path(args.mountpoint)
    sock = control.socket_for(mountpoint, Path(args.cache_dir) if args.cache_dir else None)
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
