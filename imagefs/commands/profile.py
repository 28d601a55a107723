"""``imagefs profile show ID``: what a boot profile holds (``imagefs.profiles``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import default_cache_dir
from ..errors import ImageNotFound
from ..output import print_table
from ..profiles import ProfileStore
from ..progress import human


def add_arguments(top, fmt: argparse.ArgumentParser) -> None:
    p = top.add_parser("profile", help="boot profiles: what boots of an image read")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("show", parents=[fmt], help="a profile's blocks, bytes and boot time")
    s.add_argument("image", metavar="ID")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--profile-dir", metavar="DIR",
                       help="where the mount keeps its profiles (its --profile-dir)")
    where.add_argument("--cache-dir", metavar="DIR",
                       help="the mount's cache directory, whose profiles/ to read "
                            f"(default {default_cache_dir()})")
    s.set_defaults(run=run)


def run(args) -> int:
    root = Path(args.profile_dir) if args.profile_dir else \
        Path(args.cache_dir or default_cache_dir()) / "profiles"
    profiles = ProfileStore(root).find(args.image)
    if not profiles:
        raise ImageNotFound(f"no boot profile of image {args.image} in {root}")
    if args.format == "json":
        print(json.dumps([json.loads(p.to_json()) for p in profiles], indent=2))
        return 0
    for profile in profiles:
        print_table([("image", profile.image_id), ("version", profile.version),
                     ("boots recorded", profile.boots),
                     ("boot time covered", f"{profile.covered_s:.1f} s of a "
                                           f"{profile.window_s:g} s window"),
                     ("ranges", len(profile.ranges)),
                     ("bytes", f"{profile.bytes} ({human(profile.bytes)}, "
                               f"{100 * profile.bytes / max(profile.size, 1):.1f}% of "
                               f"{human(profile.size)})")], ("Field", "Value"))
        print_table([(offset, length, f"{ms / 1000:.3f}")
                     for offset, length, ms in profile.ranges],
                    ("Offset", "Length", "First read (s)"))
    return 0
