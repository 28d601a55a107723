"""Option groups more than one subcommand takes: the image service, the output format."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..control import socket_for
from ..output import FORMATS


def service_options() -> argparse.ArgumentParser:
    """Which image service, with which credentials; and how much to log."""
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


def format_option(formats: Sequence[str] = ("table", "json")) -> argparse.ArgumentParser:
    """``-f/--format``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-f", "--format", choices=formats, default="table",
                   help="output format (default table)")
    return p


def output_options() -> argparse.ArgumentParser:
    """``-f`` with every format ``imagefs.output`` prints, and ``-c COLUMN``."""
    p = format_option(FORMATS)
    p.add_argument("-c", "--column", dest="columns", action="append", metavar="COLUMN",
                   help="show only this column, by header or field name (repeatable)")
    return p


def quiet_options(p: argparse.ArgumentParser) -> None:
    """``-v`` and ``--debug``, accepted but not shown, by a command that logs little."""
    p.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)


def socket_option(p: argparse.ArgumentParser) -> None:
    """``--cache-dir``, for a command that talks to a running mount."""
    p.add_argument("--cache-dir", metavar="DIR", help="the mount's cache directory, if it "
                   "cannot be found from MOUNTPOINT")


def mount_socket(mountpoint: Path, cache_dir: str | None) -> Path:
    """The control socket of the mount at ``mountpoint``, or in ``--cache-dir``."""
    return socket_for(mountpoint, Path(cache_dir).absolute() if cache_dir else None)
