"""``imagefs image list|show|create|update|delete|download``, as ``openstack image`` has them.

What they print is ``imagefs.output``'s.  ``download`` writes the image only
complete and checked against its hash (``API.download``'s contract); with
``--direct`` it reads the bytes from the image's store where its location
allows.  ``delete`` goes on past an image it cannot delete and exits 1 at the
end.  An image is named by UUID, URI or, where one image has it, name.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import re
import sys
from typing import Any

from ..connect import (add_direct_arguments, direct_from_args, is_explicit, open_api,
                       service_options)
from ..drivers.local import default_store_dir
from ..errors import ConfigError, ImagefsError, ImageNotFound, ImageProtected
from ..output import list_columns, print_record, print_records, record_columns
from ..progress import ProgressLine, human
from ..sources.choose import SourceChooser

log = logging.getLogger("imagefs")


def _property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _visibility(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    for v in ("public", "private", "shared", "community"):
        g.add_argument(f"--{v}", dest="visibility", action="store_const", const=v,
                       help=f"make the image {v}")


def _protection(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--protected", dest="protected", action="store_const", const=True,
                   help="keep the image from being deleted")
    g.add_argument("--unprotected", dest="protected", action="store_const", const=False,
                   help="let the image be deleted")


def _tag(text: str) -> str:
    if not text or text != text.strip():
        raise argparse.ArgumentTypeError(f"a tag is a non-empty word, not {text!r}")
    return text


def add_arguments(top, svc: argparse.ArgumentParser, out: argparse.ArgumentParser) -> None:
    """``imagefs image ACTION``; ``svc`` and ``out`` are the shared option groups."""
    image = top.add_parser("image", help="list, show, create, update, delete, download images")
    sub = image.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("list", parents=[svc, out], help="list images")
    p.add_argument("--name")
    p.add_argument("--status", help="only this status (default active; 'all' for any)")
    p.add_argument("--visibility", choices=("public", "private", "shared", "community"))
    p.add_argument("--owner", metavar="PROJECT")
    p.add_argument("--disk-format")
    p.add_argument("--container-format")
    p.add_argument("--property", type=_property, action="append", default=[],
                   metavar="KEY=VALUE", help="only images with this property (repeatable)")
    p.add_argument("--tag", type=_tag, action="append", default=[], dest="tags",
                   help="only images with this tag (repeatable: images with all)")
    p.add_argument("--hidden", action="store_true",
                   help="include hidden images (os_hidden), which are otherwise left out")
    p.add_argument("--long", action="store_true",
                   help="more columns: formats, checksum, protection, project, tags")
    p.add_argument("--limit", type=int)
    p.add_argument("--sort-key", default="created_at")
    p.add_argument("--sort-dir", choices=("asc", "desc"), default="desc")

    p = sub.add_parser("show", parents=[svc, out], help="show one image")
    p.add_argument("image", metavar="ID", help="image UUID or URI")

    p = sub.add_parser("create", parents=[svc, out], help="create an image")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--file", metavar="PATH", help="upload the image's data from PATH")
    p.add_argument("--disk-format", required=True)
    p.add_argument("--container-format", required=True)
    p.add_argument("--min-disk", type=int)
    p.add_argument("--min-ram", type=int)
    p.add_argument("--property", type=_property, action="append", default=[],
                   metavar="KEY=VALUE", help="set a custom property (repeatable)")
    p.add_argument("--tag", type=_tag, action="append", default=[], dest="tags",
                   help="tag the image (repeatable)")
    _visibility(p)
    _protection(p)

    p = sub.add_parser("update", parents=[svc, out], help="change an image's metadata")
    p.add_argument("image", metavar="ID")
    p.add_argument("--name")
    p.add_argument("--min-disk", type=int)
    p.add_argument("--min-ram", type=int)
    p.add_argument("--property", type=_property, action="append", default=[],
                   metavar="KEY=VALUE", help="set a custom property (repeatable)")
    p.add_argument("--purge-props", action="store_true",
                   help="remove every custom property not given with --property")
    p.add_argument("--tag", type=_tag, action="append", default=[], dest="tags",
                   help="add this tag (repeatable)")
    p.add_argument("--remove-tag", type=_tag, action="append", default=[],
                   dest="remove_tags", metavar="TAG", help="remove this tag (repeatable)")
    _visibility(p)
    _protection(p)

    p = sub.add_parser("delete", parents=[svc], help="delete images")
    p.add_argument("images", metavar="ID", nargs="+")

    p = sub.add_parser("download", parents=[svc], help="download an image, verified")
    p.add_argument("image", metavar="ID")
    p.add_argument("--file", metavar="PATH", required=True,
                   help="write to PATH (it appears only complete and verified, with the "
                        "umask's mode); '-' for stdout")
    add_direct_arguments(p)
    image.set_defaults(run=run)


def _open(args):
    opts = service_options(args)
    if not is_explicit(opts):
        print(f"imagefs: using the embedded store in {default_store_dir()} (no --store, "
              "--os-cloud or OS_* variables given)", file=sys.stderr)
    progress = None
    if args.action in ("create", "download") and sys.stderr.isatty():
        progress = ProgressLine("uploading" if args.action == "create" else "downloading")
    api, ctx = open_api(opts, progress=progress)
    if args.action == "download":
        direct = direct_from_args(args)
        if direct.schemes:
            api.direct = SourceChooser(api, ctx, direct).open_direct
    return api, ctx, progress


def _info(args) -> dict:
    info: dict[str, Any] = {}
    for key in ("name", "disk_format", "container_format", "min_disk", "min_ram", "visibility",
                "protected"):
        value = getattr(args, key, None)
        if value is not None:
            info[key] = value
    info["properties"] = dict(args.property)
    return info


def run(args) -> int:
    if args.action in ("list",):
        args.chosen = list_columns(args.columns, args.long)
    elif args.action in ("show", "create", "update"):
        args.chosen = record_columns(args.columns)
    api, ctx, progress = _open(args)
    try:
        return _IMAGE_ACTIONS[args.action](api, ctx, args)
    finally:
        if progress:
            progress.finish()


def _list(api, ctx, args) -> int:
    filters = {k: getattr(args, k) for k in ("name", "visibility", "owner", "disk_format",
                                              "container_format") if getattr(args, k)}
    filters.update(dict(args.property))
    if args.tags:
        filters["tag"] = args.tags
    if args.status:
        filters["status"] = None if args.status == "all" else args.status
    paging = dict(limit=args.limit, sort_key=args.sort_key, sort_dir=args.sort_dir)
    records = api.get_all(ctx, filters=filters, **paging)
    if args.hidden:
        records = _merged(records, api.get_all(ctx, filters={**filters, "os_hidden": True},
                                               **paging), args.sort_key, args.sort_dir,
                          args.limit)
    print_records(list(records), args.chosen, args.format, whole=not args.columns)
    return 0


def _merged(shown, hidden, sort_key: str, sort_dir: str, limit: int | None):
    """Two listings sorted alike, as one: Glance lists hidden images only when
    asked for them alone."""
    def key(record):
        value = record.get(sort_key)
        return (value is not None, value if value is not None else "", record["id"])
    merged = heapq.merge(shown, hidden, key=key, reverse=(sort_dir == "desc"))
    return itertools.islice(merged, limit) if limit is not None else merged


_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                   r"[0-9a-fA-F]{12}")


def _image_id(api, ctx, text: str) -> str:
    """An image UUID or URI as given; a name, for the one image that has it (as
    ``openstack image show NAME`` does)."""
    if _UUID.fullmatch(text) or "://" in text or text.startswith("imagefs-local:"):
        return text
    ids = [r["id"] for r in api.get_all(ctx, name=text, status=None, limit=10)]
    if not ids:
        raise ImageNotFound(f"no image named {text!r} (nor is it an image UUID or URI)")
    if len(ids) > 1:
        raise ConfigError(f"more than one image is named {text!r}: {', '.join(ids)}; "
                          "give an id")
    return ids[0]


def _show(api, ctx, args) -> int:
    """With the image's locations, where the service shows them to the caller
    (Glance's policy decides; its default is admins and the owner's readers)."""
    record = api.get(ctx, _image_id(api, ctx, args.image), include_locations=True,
                     show_deleted=False)
    if not record["locations"] and not record.get("direct_url"):
        record = {k: v for k, v in record.items() if k not in ("locations", "direct_url")}
    print_record(record, args.format, args.chosen)
    return 0


def _create(api, ctx, args) -> int:
    info = _info(args)
    if args.tags:
        info["tags"] = args.tags
    if args.file:
        try:
            with open(args.file, "rb") as f:
                record = api.create(ctx, info, data=f)
        except OSError as exc:
            raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from exc
    else:
        record = api.create(ctx, info)
    print_record(record, args.format, args.chosen)
    return 0


def _update(api, ctx, args) -> int:
    info = _info(args)
    if not args.purge_props and not info["properties"]:
        del info["properties"]
    print_record(api.update(ctx, args.image, info, purge_props=args.purge_props,
                            add_tags=args.tags, remove_tags=args.remove_tags),
                 args.format, args.chosen)
    return 0


def _delete(api, ctx, args) -> int:
    failed = 0
    for image in args.images:
        try:
            api.delete(ctx, _image_id(api, ctx, image))
        except ImageProtected as exc:
            print(f"imagefs: {exc}; unprotect it first: imagefs image update {image} "
                  "--unprotected", file=sys.stderr)
            failed += 1
        except ImagefsError as exc:
            print(f"imagefs: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0  # a failed request's exit code


def _download(api, ctx, args) -> int:
    """To ``--file``, or with ``--file -`` to stdout, as the bytes arrive (the
    check against the image's hash comes at the end: a failure then is exit 1
    with the bytes already written)."""
    image_id = _image_id(api, ctx, args.image)
    if args.file == "-":
        if sys.stdout.isatty():
            raise ConfigError("--file - writes the image to stdout, which is a terminal: "
                              "redirect it")
        sys.stdout.flush()
        record = api.download(ctx, image_id, data=sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        record = api.download(ctx, image_id, dest_path=args.file)
    log.info("wrote %s (%s) to %s", record["id"], human(record["size"] or 0),
             "stdout" if args.file == "-" else args.file)
    return 0


_IMAGE_ACTIONS = {"list": _list, "show": _show, "create": _create, "update": _update,
                  "delete": _delete, "download": _download}
