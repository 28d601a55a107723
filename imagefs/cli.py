"""The ``imagefs`` command: ``imagefs image …``, ``imagefs mount``, ``imagefs umount``.

Errors print one line on stderr and exit non-zero: 1 for a failed request,
2 for bad usage or settings, 130 when interrupted, 143 at SIGTERM.  ``--debug`` adds
tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from typing import Any, Sequence

from . import __version__
from .argv_token import hide_token, token_from_argv
from .errors import ConfigError, ImagefsError, ImageNotFound, ImageProtected
from .output import (FORMATS, list_columns, print_record, print_records, print_table,
                     record_columns)
from .progress import ProgressLine, human

log = logging.getLogger("imagefs")

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143


class Terminated(BaseException):
    """SIGTERM, raised where the main thread is, so that what is under way
    cleans up as it does for Ctrl-C (a download removes its temporary file).
    A BaseException, so that no ``except Exception`` on the way swallows it."""


def _terminate(signum, frame):
    raise Terminated()


# ---- option groups shared by the subcommands ---------------------------------
def _service_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("image service (default: the embedded store)")
    g.add_argument("--store", metavar="DIR", help="use the embedded store in DIR")
    g.add_argument("--os-cloud", metavar="NAME", help="cloud in clouds.yaml (env OS_CLOUD)")
    g.add_argument("--os-auth-token", metavar="TOKEN",
                   help="token (env OS_AUTH_TOKEN); on the command line it is visible to other "
                        "users until imagefs hides it: prefer --os-auth-token-file or "
                        "OS_AUTH_TOKEN")
    g.add_argument("--os-auth-token-file", metavar="FILE",
                   help="read the token from FILE, and again when it is refused, so it can be "
                        "rotated under a mount (env OS_AUTH_TOKEN_FILE)")
    g.add_argument("--os-image-url", metavar="URL",
                   help="Glance endpoint, e.g. http://glance:9292 (env OS_IMAGE_URL)")
    g.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="HTTP connect/read timeout (default 30)")
    g = p.add_argument_group("logging")
    g.add_argument("-v", "--verbose", action="store_true", help="log what is done")
    g.add_argument("--debug", action="store_true", help="log everything, with tracebacks")
    return p


def _format_option(formats: Sequence[str] = ("table", "json")) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-f", "--format", choices=formats, default="table",
                   help="output format (default table)")
    return p


def _output_options() -> argparse.ArgumentParser:
    p = _format_option(FORMATS)
    p.add_argument("-c", "--column", dest="columns", action="append", metavar="COLUMN",
                   help="show only this column, by header or field name (repeatable)")
    return p


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


def build_parser() -> argparse.ArgumentParser:
    svc, fmt, out = _service_options(), _format_option(), _output_options()
    parser = argparse.ArgumentParser(
        prog="imagefs", description="Mount OpenStack images as files, fetched lazily.")
    parser.add_argument("--version", action="version", version=f"imagefs {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    from .connect import add_direct_arguments
    add_direct_arguments(p)

    p = top.add_parser("status", parents=[fmt], help="what a running mount is doing")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--cache-dir", metavar="DIR", help="the mount's cache directory, if it "
                   "cannot be found from MOUNTPOINT")
    p.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(run=run_status)

    from . import prewarm, profile_cmd
    prewarm.add_arguments(top, fmt)
    profile_cmd.add_arguments(top, fmt)

    cache = top.add_parser("cache", help="which images the disk cache holds; remove them")
    sub = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    where = argparse.ArgumentParser(add_help=False)
    g = where.add_mutually_exclusive_group()
    g.add_argument("--cache-dir", metavar="DIR", help="the cache directory (default "
                   "$XDG_CACHE_HOME/imagefs); through its mount if one holds it")
    g.add_argument("--mount", metavar="MOUNTPOINT", help="through the mount at MOUNTPOINT")
    where.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    where.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("list", parents=[where, fmt], help="the images cached, and how much of each")
    p = sub.add_parser("evict", parents=[where, fmt],
                       help="remove images' blocks (all or none: an unknown id fails)")
    p.add_argument("ids", metavar="ID", nargs="+", help="image id")
    sub.add_parser("purge", parents=[where, fmt], help="remove every image's blocks")
    cache.set_defaults(run=run_cache)

    _add_mount_commands(top, svc)
    return parser


def _add_mount_commands(top, svc) -> None:
    try:
        from .commands.mount import add_arguments
    except ImportError:  # the mount needs pyfuse3; the image commands do not
        return
    add_arguments(top, svc)
    from .commands import restart
    restart.add_arguments(top)


# ---- the image commands ---------------------------------------------------------
def _open(args):
    from .connect import is_explicit, open_api, service_options

    opts = service_options(args)
    if not is_explicit(opts):
        from .drivers.local import default_store_dir
        print(f"imagefs: using the embedded store in {default_store_dir()} (no --store, "
              "--os-cloud or OS_* variables given)", file=sys.stderr)
    progress = None
    if args.action in ("create", "download") and sys.stderr.isatty():
        progress = ProgressLine("uploading" if args.action == "create" else "downloading")
    api, ctx = open_api(opts, progress=progress)
    if args.action == "download":
        from .connect import direct_from_args
        from .sources.choose import SourceChooser

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


def run_image(args) -> int:
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
    import heapq
    import itertools

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
    return EXIT_FAILED if failed else 0


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


def run_status(args) -> int:
    from pathlib import Path

    from .control import request, socket_for

    path = socket_for(Path(args.mountpoint).absolute(),
                      Path(args.cache_dir).absolute() if args.cache_dir else None)
    status = request(path, "status")
    if args.format == "json":
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print_table([(k, status.get(k)) for k in ("pid", "version", "started", "takeovers",
                                             "service", "uptime_s", "fetched_bytes", "memory_hits",
                                         "disk_hits", "memory_bytes", "cache_bytes",
                                         "cache_size", "disk_behind_blocks",
                                         "disk_missed_blocks")], ("Field", "Value"))
    print_table([(i["id"], i["name"], i["size"], i["cached_bytes"], i["fetched_bytes"],
                  i["path"]) for i in status["images"]],
                ("ID", "Name", "Size", "Cached", "Fetched", "Path"))
    return 0


def run_cache(args) -> int:
    from pathlib import Path

    from .cachectl import run
    from .config import default_cache_dir

    mountpoint = Path(args.mount).absolute() if args.mount else None
    cache_dir = None if mountpoint else Path(args.cache_dir or default_cache_dir()).absolute()
    reply = run(args.action, getattr(args, "ids", []), cache_dir, mountpoint)
    if args.format == "json":
        print(json.dumps(reply.get("images", reply.get("evicted")), indent=2, sort_keys=True))
    elif args.action == "list":
        print_table([(i["id"] or "-", i["name"] or "-", _short(i["version"]),
                      "-" if i["size"] is None else i["size"], i["cached_bytes"])
                     for i in reply["images"]], ("ID", "Name", "Version", "Size", "Cached"))
    else:
        for e in reply["evicted"]:
            print(f"evicted {e['id'] or e['dir']} ({e['name'] or '-'}): "
                  f"{human(e['freed_bytes'])}")
    return 0


def _short(version: str | None) -> str:
    """A version (a sha512 is 128 digits) short enough for a table."""
    if not version:
        return "-"
    return version if len(version) <= 16 else version[:12] + "…"


_IMAGE_ACTIONS = {"list": _list, "show": _show, "create": _create, "update": _update,
                  "delete": _delete, "download": _download}


# ---- entry point -----------------------------------------------------------------
def setup_logging(verbose: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="imagefs: %(levelname)s: %(message)s"
                        if not debug else "%(asctime)s %(name)s %(levelname)s: %(message)s")
    if not debug:  # the libraries' own chatter is for --debug
        for name in ("keystoneauth", "glanceclient", "urllib3", "openstack", "stevedore"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """The command; ``argv`` None means this process's own command line, from
    which a token given as ``--os-auth-token`` is then hidden (a re-exec)."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a holder's daemons run it again
    setup_logging(getattr(args, "verbose", False), getattr(args, "debug", False))
    if argv is None and hasattr(args, "os_auth_token"):
        moved = token_from_argv()
        if moved is None and args.os_auth_token:
            hide_token()  # re-executes; returns only if the token cannot be hidden
        elif moved is not None and args.os_auth_token is None:
            args.os_auth_token = moved
    try:
        if args.command == "image":
            signal.signal(signal.SIGTERM, _terminate)
            return run_image(args)
        return args.run(args)
    except ConfigError as exc:
        print(f"imagefs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImagefsError as exc:
        print(f"imagefs: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("imagefs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("imagefs: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:  # a bug: say so in one line, the traceback with --debug
        if getattr(args, "debug", False):
            raise
        print(f"imagefs: internal error: {type(exc).__name__}: {exc} (run with --debug for "
              "details)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
