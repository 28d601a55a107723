"""``imagefs profile list|show|delete|record``: boot profiles, local and published.

``list``, ``show`` and ``delete`` cover the profiles in a mount's profile
directory (``imagefs.profiles``) and, when an image service is named (the
mount's options: ``--os-cloud``, ``OS_*``, ``--store``), the ones published
through it (``imagefs.profiles_published``) that the credentials' project
owns.  ``record`` is ``imagefs.commands.profile_record``'s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import default_cache_dir
from ..errors import ImageNotFound
from ..output import print_table
from ..profiles import ProfileStore
from ..progress import human
from . import profile_record


def add_arguments(top, fmt: argparse.ArgumentParser,
                  svc: argparse.ArgumentParser | None = None) -> None:
    p = top.add_parser("profile", help="boot profiles: what boots of an image read")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    parents = [fmt] + ([svc] if svc is not None else [])
    where = _where()
    s = sub.add_parser("show", parents=parents + [where],
                       help="a profile's blocks, bytes and boot time")
    s.add_argument("image", metavar="ID")
    s.set_defaults(run=run_show)
    ls = sub.add_parser("list", parents=parents + [where],
                        help="every profile, local and published")
    ls.set_defaults(run=run_list)
    d = sub.add_parser("delete", parents=parents + [where],
                       help="remove an image's profiles, local and published")
    d.add_argument("image", metavar="ID")
    d.set_defaults(run=run_delete)
    profile_record.add_arguments(sub)


def _where() -> argparse.ArgumentParser:
    """``--profile-dir`` or ``--cache-dir``: where the mount keeps its profiles."""
    parser = argparse.ArgumentParser(add_help=False)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--profile-dir", metavar="DIR",
                       help="where the mount keeps its profiles (its --profile-dir)")
    where.add_argument("--cache-dir", metavar="DIR",
                       help="the mount's cache directory, whose profiles/ to read "
                            f"(default {default_cache_dir()})")
    return parser


def _stores(args):
    """(local store, published store or None)."""
    root = Path(args.profile_dir) if args.profile_dir else \
        Path(args.cache_dir or default_cache_dir()) / "profiles"
    published = None
    if hasattr(args, "os_cloud"):
        from ..connect import is_explicit, open_api, service_options
        from ..profiles_published import PublishedProfiles

        opts = service_options(args)
        if is_explicit(opts):
            published = PublishedProfiles(*open_api(opts))
    return ProfileStore(root), published


def _all(args, image_id):
    local, published = _stores(args)
    found = local.find(image_id)
    if published is not None:
        found += published.find(image_id)
    return local, published, found


def run_list(args) -> int:
    _, _, profiles = _all(args, None)
    if args.format == "json":
        print(json.dumps([{**json.loads(p.to_json()), "origin": p.origin} for p in profiles],
                         indent=2))
        return 0
    print_table([(p.image_id, p.version[:16], p.boots, len(p.ranges), human(p.bytes),
                  p.origin) for p in profiles],
                ("Image", "Version", "Boots", "Ranges", "Bytes", "Where"))
    return 0


def run_delete(args) -> int:
    local, published, _ = _all(args, args.image)
    gone_local = local.delete(args.image)
    gone_published = published.delete(args.image) if published is not None else 0
    if not gone_local and not gone_published:
        raise ImageNotFound(f"no boot profile of image {args.image} in {local.root}"
                            f"{'' if published is None else ' nor published'}")
    print(f"{args.image}: {gone_local} local and {gone_published} published boot profiles "
          "deleted")
    return 0


def run_show(args) -> int:
    local, published, profiles = _all(args, args.image)
    if not profiles:
        raise ImageNotFound(f"no boot profile of image {args.image} in {local.root}"
                            f"{'' if published is None else ' nor published'}")
    if args.format == "json":
        print(json.dumps([json.loads(p.to_json()) for p in profiles], indent=2))
        return 0
    for profile in profiles:
        print_table([("image", profile.image_id), ("version", profile.version),
                     ("where", profile.origin),
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
