"""``mount.imagefs``: the helper mount(8) runs for an fstab line of type ``imagefs``.

::

    glance  /var/lib/imagefs/images  imagefs  _netdev,os_cloud=mycloud,cache_dir=/var/cache/imagefs,allow_other,gid=kvm  0 0
    store:/srv/images  /mnt/images  imagefs  defaults  0 0

mount(8) calls ``mount.imagefs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]``.
SOURCE is ``glance`` (credentials from the options, ``OS_*`` or
``clouds.yaml``) or ``store:/path`` (the embedded store there).  Every
``imagefs mount`` option is accepted as ``key=value`` (or ``key`` for a
switch), with ``-`` and ``_`` alike.  The options mount(8) and systemd use
themselves (``defaults``, ``_netdev``, ``nofail``, ``noauto``, ``auto``,
``user``, ``users``, ``nouser``, ``ro``, ``rw``, ``x-*``, ``comment=*``) are
accepted and ignored: the mount is read-only whatever they say.  Anything
else is an error.  The mount then runs as ``imagefs mount`` in the
background, and this returns once it is ready, or fails with the reason.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

#: Options for mount(8), systemd or the fstab's reader, not for imagefs.
IGNORED = {"defaults", "_netdev", "nofail", "noauto", "auto", "user", "users", "nouser",
           "owner", "ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "async",
           "sync", "atime", "noatime", "relatime"}
#: imagefs mount options that make no sense from fstab.
REFUSED = {"foreground", "help", "store"}


class _Exact(argparse.ArgumentParser):
    """A parser that takes an option only by its whole name, and raises its errors."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, exit_on_error=False, **kwargs)


def _mount_parser() -> argparse.ArgumentParser:
    """``imagefs mount``'s own parser, as an ``_Exact`` one."""
    from .commands import mount
    from .commands.options import service_options

    top = argparse.ArgumentParser().add_subparsers(parser_class=_Exact)
    return mount.add_arguments(top, service_options())


def _takes_value(mount: argparse.ArgumentParser, name: str) -> bool | None:
    """Whether ``imagefs mount``'s ``--name`` takes a value; None when it has no such
    option.  Asked of the parser itself, so that the answer is what it would do."""
    try:
        _, unknown = mount.parse_known_args(["MOUNTPOINT", f"--{name}"])
    except argparse.ArgumentError:  # expected one argument
        return True
    return None if unknown else False


def translate(source: str, mountpoint: str, options: str) -> list[str]:
    """The ``imagefs`` command line for an fstab entry; ``ValueError`` says what is wrong."""
    argv = ["mount", mountpoint]
    if source.startswith("store:"):
        if not source[len("store:"):]:
            raise ValueError("store: needs a path, e.g. store:/srv/images")
        argv += ["--store", source[len("store:"):]]
    elif source != "glance":
        raise ValueError(f"source {source!r}: use 'glance' or 'store:/path'")
    mount = _mount_parser()
    for option in filter(None, (o.strip() for o in options.split(","))):
        key, sep, value = option.partition("=")
        name = key.replace("_", "-")
        if key in IGNORED or key.startswith("x-") or key == "comment":
            continue
        takes_value = None if name in REFUSED else _takes_value(mount, name)
        if takes_value is None:
            raise ValueError(f"unknown imagefs mount option {key!r}")
        if not takes_value:  # a switch
            if sep:
                raise ValueError(f"option {key!r} takes no value")
            argv.append(f"--{name}")
        else:
            if not sep or not value:
                raise ValueError(f"option {key!r} needs a value ({key}=...)")
            argv += [f"--{name}", value]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mount.imagefs",
                                     description="mount(8) helper for imagefs fstab lines")
    parser.add_argument("source", help="glance, or store:/path")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", default="", help="comma-separated options")
    for flag in ("-s", "-f", "-n", "-v"):  # sloppy, fake, no mtab, verbose: mount(8)'s
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-t", dest="type", help=argparse.SUPPRESS)
    parser.add_argument("-N", dest="namespace", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        command = translate(args.source, args.mountpoint, args.options)
    except ValueError as exc:
        print(f"mount.imagefs: {exc}", file=sys.stderr)
        return 2
    if args.f:  # mount -f: pretend
        return 0
    from .cli import main as imagefs_main
    return imagefs_main(command)


if __name__ == "__main__":
    sys.exit(main())
