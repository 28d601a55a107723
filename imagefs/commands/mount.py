"""``imagefs mount`` and ``imagefs umount``.

Without ``--foreground`` the command forks (``imagefs.daemon``); the parent
waits until the daemon reports the mount ready (exit 0) or failed (the reason
on stderr, exit 1), so a script can use the mount as soon as the command
returns.  With ``--foreground`` it serves in this process, as systemd's
``Type=notify`` unit does.  What is served, and how, is ``imagefs.mount``.
Either way the mount is kept by a holder (``imagefs.commands.held``,
``imagefs.holder``) that starts the serving daemon as this command line again;
that daemon, which finds ``IMAGEFS_TAKEOVER`` set, serves the connection the
holder hands it (``_serve_adopted``).

One mount per cache directory: the mount holds ``<cache dir>/lock`` for its
whole life (``imagefs.cachelock``; the holder holds it, so that two daemons
may overlap while one hands the mount over), and a second mount on the same directory
is refused with the first one's pid.  The directory is claimed first
(``imagefs.cache.directory``): a directory that is not an imagefs cache is
refused before anything is created in it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .. import metrics, nova
from ..cachelock import lock_cache_dir, write_pid
from ..config import (MountConfig, config_from_args, default_cache_dir, format_mode,
                      format_size)
from ..connect import (NO_SERVICE, add_direct_arguments, describe, direct_from_args,
                       is_explicit, open_api, service_options)
from ..daemon import ReadyPipe, daemonize, log_to_file
from ..errors import ConfigError, ImagefsError
from ..mount import serve
from ..mountpoint import IMAGEFS_FSTYPE
from ..mountpoint import prepare as prepare_mountpoint
from ..mountpoint import probe as probe_mountpoint
from ..mountpoint import unmount
from ..takeover import Adopted
from . import held
from .options import quiet_options

log = logging.getLogger(__name__)


def add_arguments(top, svc: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``imagefs mount`` and ``imagefs umount``; the mount's parser is returned (for
    ``mount.imagefs``, which takes the same options)."""
    d = MountConfig  # the defaults, shown in the help; an option not given leaves them
    p = top.add_parser("mount", parents=[svc], help="mount the images at MOUNTPOINT")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--nonempty", action="store_true",
                   help="mount over a directory that is not empty (hiding what is in it)")
    p.add_argument("--cache-dir", metavar="DIR", help=f"disk cache (default {default_cache_dir()})")
    p.add_argument("--cache-size", metavar="SIZE",
                   help=f"disk cache bound (default {format_size(d.cache_size)}; 0 disables it)")
    p.add_argument("--cache-min-free", metavar="SIZE|PERCENT",
                   help="free space the disk cache leaves on its filesystem (default "
                        f"{str(d.cache_min_free).replace('%', '%%')})")
    p.add_argument("--memory-cache", metavar="SIZE",
                   help=f"memory cache bound (default {format_size(d.memory_cache)})")
    p.add_argument("--block-size", metavar="SIZE",
                   help=f"cache block size (default {format_size(d.block_size)})")
    p.add_argument("--readahead", metavar="SIZE",
                   help="how far the mount fetches ahead of a sequential reader "
                        f"(default {format_size(d.max_readahead)}; 0 turns it off)")
    p.add_argument("--kernel-readahead", metavar="SIZE",
                   help="the kernel's readahead on the mount (default "
                        f"{format_size(d.read_ahead_kb * 1024)}; 0 leaves the kernel's own)")
    p.add_argument("--fetch-threads", type=int, metavar="N",
                   help="ranged reads (random access) in flight at once "
                        f"(default {d.fetch_threads})")
    p.add_argument("--list-ttl", type=float, metavar="SECONDS",
                   help=f"how long a listing of images is trusted (default {d.list_ttl:g})")
    p.add_argument("--record-ttl", type=float, metavar="SECONDS",
                   help=f"how long an image's metadata is trusted (default {d.record_ttl:g})")
    p.add_argument("--read-deadline", type=float, metavar="SECONDS",
                   help="a read that cannot be served by then fails with EIO "
                        f"(default {d.read_deadline:g})")
    p.add_argument("--profile-dir", metavar="DIR",
                   help="boot profiles: what the first boot of an image read, replayed as a "
                        "prefetch on later opens (default <cache dir>/profiles; hosts may "
                        "share one)")
    p.add_argument("--profile-window", type=float, metavar="SECONDS",
                   help="how long after an image's first read its reads are recorded "
                        f"(default {d.profile_window:g}; 0 records nothing)")
    p.add_argument("--publish-profiles", action=argparse.BooleanOptionalAction,
                   help="publish boot profiles through the image service, and look for "
                        f"published ones (default {'on' if d.publish_profiles else 'off'}; "
                        "--no-publish-profiles: the profile directory alone)")
    p.add_argument("--allow-other", action="store_true", help="let other users read the mount")
    p.add_argument("--uid", metavar="USER", help="owner of every file (default: the mount's user)")
    p.add_argument("--gid", metavar="GROUP", help="group of every file (default: the mount's)")
    p.add_argument("--file-mode", metavar="MODE",
                   help=f"permissions of the files (default {format_mode(d.file_mode)}); the "
                        "kernel enforces them")
    p.add_argument("--dir-mode", metavar="MODE",
                   help=f"permissions of the directories (default {format_mode(d.dir_mode)})")
    p.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics (default off)")
    p.add_argument("--log", metavar="FILE",
                   help="log file when in the background (default <cache dir>/imagefs.log)")
    p.add_argument("--purge-on-unmount", action="store_true",
                   help="at unmount, remove from the disk cache the blocks of every image "
                        "that is not public (private, shared, community, or of unknown "
                        "visibility); public images' stay")
    add_direct_arguments(p)
    nova.add_arguments(p)
    p.set_defaults(run=run)

    u = top.add_parser("umount", help="unmount an imagefs mount")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    quiet_options(u)
    u.set_defaults(run=run_umount)
    return p


def _identity(ctx) -> str:
    """`` as user U in project P`` where the context knows them."""
    parts = [f"user {ctx.user_id}" if ctx.user_id else "",
             f"project {ctx.project_id}" if ctx.project_id else ""]
    return (" as " + " in ".join(p for p in parts if p)) if any(parts) else ""


def run(args) -> int:
    """``imagefs mount``: check what can be checked here, then serve, in this process
    or in a daemon; or, started by the holder, serve the connection it hands over."""
    adopted = Adopted.from_environment()
    if adopted is not None:
        return _serve_adopted(args, adopted)
    mountpoint = Path(args.mountpoint).absolute()
    prepare_mountpoint(mountpoint, args.nonempty)  # clears a mount left dead by a killed daemon
    config = config_from_args(args)
    if args.metrics:
        metrics.parse_address(args.metrics)  # a bad address is a usage error, before anything
    opts = service_options(args)
    if not is_explicit(opts):  # a forgotten openrc must not look like an empty cloud
        raise ConfigError(NO_SERVICE)
    direct = direct_from_args(args)
    nova_base = nova.check_base_dir(args.nova_base_dir, args.allow_other) \
        if args.nova_base_dir else None
    api, ctx = open_api(opts, retry=config.retry)
    # Fail now, with the reason, rather than mount something that cannot list.
    next(iter(api.get_all(ctx, limit=1)), None)
    lock_fd = lock_cache_dir(config.cache_dir)  # held (an open fd) until the holder exits
    what = f"mounting {describe(opts)}{_identity(ctx)} at {mountpoint}"
    log.info("%s (cache %s)", what, config.cache_dir)
    if args.foreground and log.getEffectiveLevel() > logging.INFO:
        print(f"imagefs: {what}", file=sys.stderr)
    def run_serve(ready) -> int:
        write_pid(config.cache_dir)
        return serve(api, ctx, config, direct, mountpoint, ready, describe(opts), args.metrics,
                     args.purge_on_unmount, nova_base)
    log_file = None
    if not args.foreground:
        log_file = Path(args.log) if args.log else config.cache_dir / "imagefs.log"
        try:  # fail here, with the reason, rather than in the daemon
            os.close(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        except OSError as exc:
            raise ConfigError(f"cannot open the log file {log_file}: {exc.strerror}; "
                              "give another with --log") from None
    if held.enabled():
        return held.start(args, config, mountpoint, lock_fd, log_file)
    if args.foreground:
        return run_serve(None)
    return daemonize(run_serve, log_file)


def _serve_adopted(args, adopted: Adopted) -> int:
    """The holder's daemon: the mount point is mounted, the cache directory locked and
    the service checked already; serve the connection the holder hands over."""
    log_file = os.environ.get(held.LOG_ENV)
    if log_file:
        log_to_file(Path(log_file))
    config = config_from_args(args)
    opts = service_options(args)
    api, ctx = open_api(opts, retry=config.retry)
    ready = ReadyPipe(adopted.ready_fd) if adopted.ready_fd is not None else None
    try:
        nova_base = Path(args.nova_base_dir).absolute() if args.nova_base_dir else None
        return serve(api, ctx, config, direct_from_args(args), Path(args.mountpoint).absolute(),
                     ready, describe(opts), args.metrics, args.purge_on_unmount, nova_base,
                     adopted=adopted)
    except BaseException as exc:  # the first daemon's reason is the mount command's
        if ready is not None:
            ready(str(exc) if isinstance(exc, ImagefsError) else f"{type(exc).__name__}: {exc}")
        raise


def run_umount(args) -> int:
    """Unmount; a mount left dead by a killed daemon is detached lazily."""
    mountpoint = Path(args.mountpoint).absolute()
    state = probe_mountpoint(mountpoint)
    if state.fstype is None and not os.path.ismount(mountpoint):
        raise ConfigError(f"{mountpoint} is not mounted")
    if state.fstype != IMAGEFS_FSTYPE:
        raise ConfigError(f"{mountpoint} is a {state.fstype or 'non-imagefs'} mount, not an "
                          "imagefs one; not unmounting it")
    unmount(mountpoint, lazy=state.dead)
    if state.dead:
        log.info("%s was a dead %s mount; unmounted it", mountpoint, state.fstype)
    return 0
