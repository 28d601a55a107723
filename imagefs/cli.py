"""The ``imagefs`` command: the parser of its subcommands (``imagefs.commands``),
logging, and errors turned into exit codes.

Errors print one line on stderr and exit non-zero: 1 for a failed request,
2 for bad usage or settings, 130 when interrupted, 143 at SIGTERM.  ``--debug`` adds
tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Sequence

from . import __version__
from .argv_token import hide_token, token_from_argv
from .commands import cache, image, prefetch, profile, status
from .commands.options import format_option, output_options, service_options
from .errors import ConfigError, ImagefsError

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143


class Terminated(BaseException):
    """SIGTERM, raised where the main thread is, so that what is under way
    cleans up as it does for Ctrl-C (a download removes its temporary file).
    A BaseException, so that no ``except Exception`` on the way swallows it."""


def _terminate(signum, frame):
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    svc, fmt, out = service_options(), format_option(), output_options()
    parser = argparse.ArgumentParser(
        prog="imagefs", description="Mount OpenStack images as files, fetched lazily.")
    parser.add_argument("--version", action="version", version=f"imagefs {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    image.add_arguments(top, svc, out)
    status.add_arguments(top, fmt)
    prefetch.add_arguments(top)
    profile.add_arguments(top, fmt, svc)
    cache.add_arguments(top, fmt)
    try:
        from .commands import mount
    except ImportError:  # the mount needs pyfuse3; the image commands do not
        return parser
    mount.add_arguments(top, svc)
    from .commands import restart
    restart.add_arguments(top)
    return parser


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
