"""The disk tier's index: which slots of which group files hold blocks, the groups in
least-recently-used order, and the order in which they are evicted.

Eviction removes whole groups, least recently used first, but not blindly:
an image in use (``hold``, counted per open ``data`` file) keeps its groups
while any other image's could go instead, and the groups of an image's
``keep_last`` blocks (a boot profile's, say) go after its others.  The image
whose store makes room counts as not held for that eviction: a reader
streaming an image through a cache too small for it evicts its own older
groups, not those of another image that is open (and idle) meanwhile.
Groups are taken in this order, each rank least recently used first:

    1. images not held, groups without keep-last blocks
    2. images not held, groups with keep-last blocks
    3. held images, groups without keep-last blocks
    4. held images, groups with keep-last blocks

So while held images fill the bound, a store of another image evicts that
image's own block again at once: the held images keep theirs.

``GroupIndex`` holds no lock and does no I/O: ``DiskCache`` calls it under
its lock.  A group is named ``where``: ``(image dir, group number)``.
"""

from __future__ import annotations

import collections
import dataclasses
import time

from .groupfile import GROUP_BLOCKS

Where = tuple[str, int]
_TOUCH_EVERY = 60.0  # seconds: recency on disk (a file's mtime) is kept to this precision


@dataclasses.dataclass
class Group:
    slots: set[int]
    block_size: int
    touched: float  # when the file's mtime was last set

    @property
    def bytes(self) -> int:
        return len(self.slots) * self.block_size


class GroupIndex:
    def __init__(self):
        # where -> Group, least recently used first
        self._groups: collections.OrderedDict[Where, Group] = collections.OrderedDict()
        self.bytes = 0
        self._held: collections.Counter[str] = collections.Counter()  # image dir -> opens
        self._last: dict[str, set[int]] = {}  # image dir -> groups of keep-last blocks

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, where: Where, group: Group) -> None:
        """A group found on disk, as the most recently used so far (the scan)."""
        self._groups[where] = group
        self.bytes += group.bytes

    def has(self, where: Where, slot: int) -> bool:
        group = self._groups.get(where)
        return group is not None and slot in group.slots

    def hit(self, where: Where, slots: list[int]) -> tuple[list[bool], bool]:
        """Which of ``slots`` are indexed; marks the group recently used.
        Also whether its file's mtime is due a touch."""
        group = self._groups.get(where)
        if group is None:
            return [False] * len(slots), False
        self._groups.move_to_end(where)
        touch = time.time() - group.touched > _TOUCH_EVERY
        if touch:
            group.touched = time.time()
        return [s in group.slots for s in slots], touch

    def forget(self, where: Where, slot: int) -> None:
        group = self._groups.get(where)
        if group is not None and slot in group.slots:
            group.slots.discard(slot)
            self.bytes -= group.block_size

    def stored(self, where: Where, slots: range, block_size: int) -> None:
        """Blocks written into ``slots``: the group is now the most recently used."""
        group = self._groups.get(where)
        if group is None:
            group = self._groups[where] = Group(set(), block_size, time.time())
        self._groups.move_to_end(where)
        for s in slots:
            if s not in group.slots:
                group.slots.add(s)
                self.bytes += block_size

    def pop_oldest(self, keep: Where | None = None,
                   storing: str | None = None) -> tuple[Where, int] | None:
        """Out of the index: the group other than ``keep`` to evict first, the least
        recently used of the lowest rank (``rank``, for a store of image directory
        ``storing``; ``keep``'s when given), and its bytes; None if there is none."""
        if keep is not None:
            storing = keep[0]
        where, best = None, 4
        for w in self._groups:
            if w == keep:
                continue
            rank = self.rank(w, storing) if self._held or self._last else 0
            if rank < best:
                where, best = w, rank
                if rank == 0:
                    break
        if where is None:
            return None
        group = self._groups.pop(where)
        self.bytes -= group.bytes
        return where, group.bytes

    def pop_dirs(self, image_dirs: set[str]) -> tuple[list[Where], int]:
        """Out of the index: every group of ``image_dirs``, and their bytes."""
        victims = [where for where in self._groups if where[0] in image_dirs]
        freed = 0
        for where in victims:
            freed += self._groups.pop(where).bytes
        self.bytes -= freed
        return victims, freed

    def image_bytes(self) -> dict[str, int]:
        """Bytes held, by image directory."""
        held: dict[str, int] = {}
        for (image_dir, _), group in self._groups.items():
            held[image_dir] = held.get(image_dir, 0) + group.bytes
        return held

    # ---- what is in use (eviction goes elsewhere first) -----------------------------
    def hold(self, image_dir: str) -> None:
        self._held[image_dir] += 1

    def unhold(self, image_dir: str) -> None:
        if self._held[image_dir] > 1:
            self._held[image_dir] -= 1
        else:
            del self._held[image_dir]

    def keep_last(self, image_dir: str, indices) -> None:
        groups = {i // GROUP_BLOCKS for i in indices}
        if groups:
            self._last[image_dir] = groups
        else:
            self._last.pop(image_dir, None)

    def rank(self, where: Where, storing: str | None) -> int:
        """Eviction order (see the module docstring) when a store of image directory
        ``storing`` makes room: lower goes first."""
        held = where[0] in self._held and where[0] != storing
        return 2 * held + (where[1] in self._last.get(where[0], ()))
