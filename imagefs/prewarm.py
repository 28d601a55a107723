"""The daemon's side of ``imagefs prefetch``: warm-up jobs, asked for over the control socket.

The ``prefetch`` op starts a job that warms an image: the whole image, or only
its boot profile (``imagefs.profiles``), through ``BlockReader.warm`` (ranged
reads after readers; blocks already cached cost nothing).  ``prefetch-status``
says how far a job is.  The command that asks and polls is
``imagefs.commands.prefetch``.
"""

from __future__ import annotations

import itertools
import logging
import re

import trio

from .errors import ImagefsError
from .progress import human

log = logging.getLogger(__name__)

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
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
        if not _UUID.fullmatch(image_id):
            return {"error": f"not an image id: {image_id!r}"}
        image = (await self.fs._image(image_id)).ref
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
