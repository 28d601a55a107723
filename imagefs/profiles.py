"""Boot profiles: record what the first boot of an image reads, replay it later.

A **recording** starts at the first read of an image's ``data`` on a mount
and lasts ``window`` seconds (``--profile-window``, 120 by default), across
every open of the file: ``qemu-img create -b`` opens and closes the backing
file before the VM starts, as Nova does, so a close does not end it.  It
notes the blocks read, each with the time of its first touch, and is saved
when the window ends or the mount does, unless it read over ``MAX_SHARE``
of the image (a whole-image copy is not a boot).  Only reads count: the
mount's own readahead and a replay do not.

A **profile** is a small JSON file in the profile directory (``--profile-dir``,
by default ``<cache dir>/profiles``; hosts that share one, over NFS say,
share their profiles), and is also published through the image service for
hosts that share nothing else (``imagefs.profiles_published``, whose
``ProfileStores`` puts both behind this module's ``ProfileStore`` interface)::

    {"imagefs_profile": 1, "image_id": ..., "version": ..., "size": ...,
     "window_s": 120, "covered_s": 23.4, "boots": 2,
     "ranges": [[offset, length, first touch in ms], ...]}

It is keyed by image id and version (the file's name is a hash of both, and
both are checked when it is read), so it never applies to other bytes.
``ranges`` are byte ranges in the order of first touch: blocks of any size
can be cut from them.  A save merges with what the file holds by then (a
block keeps its earliest first touch) and keeps at most ``MAX_RANGES``
ranges, the earliest touched, so a profile stays a few KiB.  It is written
to a temporary file and renamed over the old one; a damaged or foreign
file is ignored with one warning.

A **replay** starts when a ``data`` file of an image with a profile is
opened (once per mount and image version): ``BlockReader.warm`` fetches the
profile's blocks in recorded order, in the background, after readers, and
the disk tier is told to evict them after the image's other blocks.
For the recording window after that, the profile is the boot's readahead:
the mount's own readahead only loads what is cached (its windows past the
ends of the guest's files fetched 3.9 MB the profile did not need, 3% of a
boot), until a reader has missed ``GUIDED_MISS`` bytes the profile did not
bring: that reader reads something else than a boot (a whole-image copy),
and gets its readahead back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import trio

from .atomic import write_whole
from .blocks import BlockReader
from .image import ImageRef

log = logging.getLogger(__name__)

FORMAT = 1
#: Ranges a profile keeps at most (the earliest touched).
MAX_RANGES = 4096
#: A recording that read more of its image than this is a copy, not a boot: not saved
#: (a boot reads a few percent: 6% of the test guest's raw disk).
MAX_SHARE = 0.5
#: Seconds a replay guides readahead on a mount that records nothing.
GUIDE_S = 120.0
#: While a profile guides, a reader that misses this many bytes gets readahead back.
GUIDED_MISS = 4 << 20


@dataclasses.dataclass
class Profile:
    image_id: str
    version: str
    size: int
    ranges: list[tuple[int, int, int]]  # (offset, length, first touch in ms), by touch
    window_s: float = 120.0
    covered_s: float = 0.0  # the last first touch
    boots: int = 1
    #: Where it was read from (``imagefs status`` shows it); not stored.
    origin: str = dataclasses.field(default="local", compare=False)

    @property
    def bytes(self) -> int:
        return sum(length for _, length, _ in self.ranges)

    def byte_ranges(self) -> Iterator[tuple[int, int]]:
        """``(start, end)`` in the order of first touch."""
        for offset, length, _ in self.ranges:
            yield offset, offset + length

    def to_json(self) -> str:
        return json.dumps({"imagefs_profile": FORMAT, "image_id": self.image_id,
                           "version": self.version, "size": self.size,
                           "window_s": self.window_s, "covered_s": round(self.covered_s, 3),
                           "boots": self.boots, "ranges": [list(r) for r in self.ranges]},
                          separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Profile:
        """Raises ValueError (with the reason) for anything but a profile."""
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("imagefs_profile") != FORMAT:
            raise ValueError("not an imagefs profile of this version")
        ranges = doc["ranges"]
        if not isinstance(ranges, list) or not all(
                isinstance(r, list) and len(r) == 3 and all(isinstance(x, int) for x in r)
                and r[0] >= 0 and r[1] > 0 for r in ranges):
            raise ValueError("its ranges are not [offset, length, ms] triples")
        return cls(str(doc["image_id"]), str(doc["version"]), int(doc["size"]),
                   [tuple(r) for r in ranges], float(doc["window_s"]),
                   float(doc["covered_s"]), int(doc["boots"]))

    @classmethod
    def of_blocks(cls, image: ImageRef, block_size: int, touched: dict[int, float],
                  window_s: float) -> Profile:
        """From block index -> first touch (seconds since the recording began)."""
        ranges: list[list[int]] = []
        for index, t in sorted(touched.items(), key=lambda item: (item[1], item[0])):
            offset = index * block_size
            length = min(block_size, image.size - offset)
            if length <= 0:
                continue
            last = ranges[-1] if ranges else None
            if last is not None and last[0] + last[1] == offset:
                last[1] += length
            else:
                ranges.append([offset, length, int(t * 1000)])
        return cls(image.id, image.version, image.size, [tuple(r) for r in ranges][:MAX_RANGES],
                   window_s, max(touched.values(), default=0.0))

    def merged(self, other: Profile) -> Profile:
        """Both profiles' bytes; a byte keeps its earlier first touch."""
        pieces = sorted(self.ranges + other.ranges, key=lambda r: (r[2], r[0]))
        covered: list[tuple[int, int]] = []  # sorted, disjoint (start, end)
        out: list[tuple[int, int, int]] = []
        for offset, length, t in pieces:
            for start, end in _subtract((offset, offset + length), covered):
                out.append((start, end - start, t))
                _insert(covered, (start, end))
        out.sort(key=lambda r: (r[2], r[0]))
        joined: list[list[int]] = []
        for offset, length, t in out:
            if joined and joined[-1][0] + joined[-1][1] == offset and joined[-1][2] == t:
                joined[-1][1] += length
            else:
                joined.append([offset, length, t])
        return Profile(self.image_id, self.version, self.size,
                       [tuple(r) for r in joined][:MAX_RANGES],
                       max(self.window_s, other.window_s),
                       max(self.covered_s, other.covered_s), self.boots + other.boots)


def _subtract(piece: tuple[int, int], covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    start, end = piece
    out = []
    for c_start, c_end in covered:
        if c_end <= start or c_start >= end:
            continue
        if c_start > start:
            out.append((start, c_start))
        start = max(start, c_end)
        if start >= end:
            break
    if start < end:
        out.append((start, end))
    return out


def _insert(covered: list[tuple[int, int]], piece: tuple[int, int]) -> None:
    covered.append(piece)
    covered.sort()
    merged = [covered[0]]
    for start, end in covered[1:]:
        if start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    covered[:] = merged


class ProfileStore:
    """Profiles in ``root``, one file per image version.  Blocking: call from threads."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._warned: set[Path] = set()

    def path(self, image_id: str, version: str) -> Path:
        digest = hashlib.sha256(f"{image_id}:{version}".encode()).hexdigest()[:40]
        return self.root / f"{digest}.json"

    def load(self, image_id: str, version: str) -> Profile | None:
        """The image version's profile; None if there is none, or it is damaged
        (one warning per file)."""
        path = self.path(image_id, version)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self._warn(path, getattr(exc, "strerror", None) or str(exc))
            return None
        try:
            profile = Profile.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            self._warn(path, f"damaged ({exc})")
            return None
        if (profile.image_id, profile.version) != (image_id, version):
            self._warn(path, "it is another image's")
            return None
        return profile

    def find(self, image_id: str | None) -> list[Profile]:
        """Every profile of the image (of every image with None), whatever its version
        (for ``profile list`` and ``show``)."""
        found = []
        with contextlib.suppress(OSError):
            for entry in sorted(self.root.glob("*.json")):
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError,
                                         UnicodeDecodeError):
                    profile = Profile.from_json(entry.read_text())
                    if image_id is None or profile.image_id == image_id:
                        profile.origin = f"local {entry}"
                        found.append(profile)
        return found

    def delete(self, image_id: str) -> int:
        """Remove the image's profiles, of every version; how many went."""
        gone = 0
        for profile in self.find(image_id):
            with contextlib.suppress(FileNotFoundError):
                self.path(profile.image_id, profile.version).unlink()
                gone += 1
        return gone

    def save(self, profile: Profile) -> Profile:
        """Merge ``profile`` into the stored one and write the result atomically."""
        old = self.load(profile.image_id, profile.version)
        if old is not None:
            profile = old.merged(profile)
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        # 0644: hosts sharing the directory read each other's profiles
        write_whole(self.path(profile.image_id, profile.version), profile.to_json().encode(),
                    mode=0o644, sync=True)
        return profile

    def _warn(self, path: Path, why: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("boot profile %s ignored: %s", path, why)


@dataclasses.dataclass
class _Recording:
    image: ImageRef
    started: float  # trio.current_time()
    touched: dict[int, float] = dataclasses.field(default_factory=dict)
    saved: bool = False
    window: float = 120.0  # seconds it lasts at most


class BootProfiles:
    """The mount's recordings and replays (on the trio thread)."""

    def __init__(self, store: ProfileStore, blocks: BlockReader, window: float,
                 nursery: trio.Nursery):
        self.store, self.blocks, self.window, self.nursery = store, blocks, window, nursery
        self._recordings: dict[tuple[str, str], _Recording] = {}
        self._replayed: set[tuple[str, str]] = set()
        self._guided_until: dict[tuple[str, str], float] = {}
        self.replays: dict[str, dict] = {}  # image id -> the last replay's figures

    def opened(self, image: ImageRef) -> None:
        """A ``data`` file was opened: replay its profile, once per mount.  Where
        none was found, a later open looks again (the store remembers misses)."""
        key = (image.id, image.version)
        if key not in self._replayed:
            self._replayed.add(key)
            self.nursery.start_soon(self._replay, image)

    def guides(self, image: ImageRef) -> bool:
        """Whether the image's profile is being replayed for a boot now: from the
        replay's start for the recording window (``GUIDE_S`` if none)."""
        until = self._guided_until.get((image.id, image.version))
        return until is not None and trio.current_time() < until

    def on_read(self, image: ImageRef, offset: int, size: int) -> None:
        key = (image.id, image.version)
        rec = self._recordings.get(key)
        now = trio.current_time()
        if rec is None:
            if self.window <= 0:
                return
            rec = self._start(image, self.window)
        if rec.saved or size <= 0:
            return
        bs = self.blocks.block_size
        t = now - rec.started
        for index in range(offset // bs, (min(offset + size, image.size) - 1) // bs + 1):
            rec.touched.setdefault(index, t)

    def _start(self, image: ImageRef, window: float) -> _Recording:
        old = self._recordings.get((image.id, image.version))
        if old is not None:
            old.saved = True  # its timer then saves nothing
        rec = self._recordings[(image.id, image.version)] = \
            _Recording(image, trio.current_time(), window=window)
        self.nursery.start_soon(self._save_after_window, rec)
        return rec

    def record(self, image: ImageRef, window: float) -> None:
        """Record the image's reads from now on, for ``window`` seconds or until
        ``save_now`` (``imagefs profile record``), whatever the mount's window."""
        self._start(image, window)

    async def save_now(self, image_id: str, publish: bool) -> dict:
        """Save (and with ``publish``, publish) the image's recording now; its figures."""
        recs = [r for r in self._recordings.values() if r.image.id == image_id and not r.saved]
        if not recs:
            return {"error": f"image {image_id}: nothing recorded (its data was not read "
                             "since the recording started)"}
        saved = await trio.to_thread.run_sync(self._save, recs[-1], publish)
        if saved is None:
            return {"error": f"image {image_id}: the recording was not saved (see the "
                             "mount's log)"}
        return {"image": image_id, "ranges": len(saved.ranges), "bytes": saved.bytes,
                "covered_s": saved.covered_s, "boots": saved.boots,
                "published": publish and getattr(self.store, "publishes", False)}

    async def _save_after_window(self, rec: _Recording) -> None:
        await trio.sleep(rec.window)
        try:
            await trio.to_thread.run_sync(self._save, rec)
        except Exception:  # a bug here must cost the profile, not the mount
            log.exception("image %s: saving its boot profile failed", rec.image.id)

    def _save(self, rec: _Recording, publish: bool = True) -> Profile | None:
        """Save the recording (locally only, without ``publish``); the saved profile."""
        if rec.saved or not rec.touched:
            return None
        rec.saved = True
        profile = Profile.of_blocks(rec.image, self.blocks.block_size, dict(rec.touched),
                                    rec.window)
        if profile.bytes > MAX_SHARE * rec.image.size:
            log.info("image %s: not saving a boot profile: %.0f%% of the image was read "
                     "in its window (a copy, not a boot)", rec.image.id,
                     100 * profile.bytes / max(rec.image.size, 1))
            return None
        store = self.store if publish else getattr(self.store, "local", self.store)
        try:
            saved = store.save(profile)
        except OSError as exc:
            log.warning("image %s: cannot save its boot profile in %s: %s", rec.image.id,
                        self.store.root, exc.strerror or exc)
            return None
        log.info("image %s: boot profile saved: %d ranges, %.1f MiB over %.1f s (%d boots)",
                 rec.image.id, len(saved.ranges), saved.bytes / 2**20, saved.covered_s,
                 saved.boots)
        return saved

    def save_all(self) -> None:
        """Save every recording not saved yet (at unmount; blocking)."""
        for rec in self._recordings.values():
            try:
                self._save(rec)
            except Exception:  # a bug here must not fail the unmount
                log.exception("image %s: saving its boot profile failed", rec.image.id)

    async def _replay(self, image: ImageRef) -> None:
        try:
            await self._replay_profile(image)
        except Exception:  # a bug here must cost the replay, not the mount
            log.exception("image %s: replaying its boot profile failed", image.id)
            self.replays[image.id] = {"finished": True, "failure": "internal error (logged)"}

    async def _replay_profile(self, image: ImageRef) -> None:
        key = (image.id, image.version)
        profile = await trio.to_thread.run_sync(self.store.load, image.id, image.version)
        if profile is not None and profile.size != image.size:
            log.warning("image %s: boot profile (%s) ignored: it is of %d bytes, the image "
                        "of %d", image.id, profile.origin, profile.size, image.size)
            profile = None
        if profile is None:
            self._replayed.discard(key)
            return
        self._guided_until[(image.id, image.version)] = \
            trio.current_time() + (self.window or GUIDE_S)
        bs = self.blocks.block_size
        self.blocks.keep_last(image, {i for start, end in profile.byte_ranges()
                                      for i in range(start // bs, (end - 1) // bs + 1)})
        log.info("image %s: replaying its boot profile (%s): %d ranges, %.1f MiB", image.id,
                 profile.origin, len(profile.ranges), profile.bytes / 2**20)
        self.replays[image.id] = {"finished": False, "origin": profile.origin}

        def progress(figures: dict) -> None:
            self.replays[image.id] = {**figures, "finished": False, "origin": profile.origin}

        figures = await self.blocks.warm(image, list(profile.byte_ranges()), progress,
                                         in_memory=True)
        self.replays[image.id] = {**figures, "finished": True, "origin": profile.origin}
        log.info("image %s: boot profile replayed: %d blocks, %d cached already, %.1f MiB "
                 "fetched, %d failed", image.id, figures["blocks"], figures["cached"],
                 figures["fetched"] / 2**20, figures["failed"])
