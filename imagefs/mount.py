"""``imagefs mount`` and ``imagefs umount``: assemble the pieces and run them.

Without ``--foreground`` the command forks; the parent waits on a pipe until
the child reports the mount ready (exit 0) or failed (the reason on stderr,
exit 1), so a script can use the mount as soon as the command returns.
SIGINT and SIGTERM unmount cleanly; after a clean unmount the daemon exits 0.
Under systemd (``Type=notify``, with ``--foreground``) the daemon says
``READY=1`` once the mount answers and ``STOPPING=1`` when it unmounts
(``imagefs.notify``).

One mount per cache directory: the daemon holds an exclusive ``flock`` on
``<cache dir>/lock`` for its whole life, and a second mount on the same
directory is refused with the first one's pid.  The directory is claimed
first (``imagefs.cache.directory``): a directory that is not an imagefs
cache is refused before anything is created in it.

``--purge-on-unmount``: once the last queued block is written, the blocks
of every image that is not public leave the disk cache, for hosts where
nothing private may outlive the mount that read it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import faulthandler
import fcntl
import functools
import logging
import logging.handlers
import os
import signal
import sys
import time
from pathlib import Path

import pyfuse3
import trio

from . import cachectl, control, metrics, nova
from .blocks import BlockReader
from .cache import DiskCache, MemoryCache, TieredCache
from .cache.directory import claim
from .config import (MountConfig, default_cache_dir, parse_free_space, parse_group,
                     parse_mode, parse_size, parse_user)
from .connect import (NO_SERVICE, add_direct_arguments, describe, direct_from_args,
                      is_explicit, open_api, service_options)
from .errors import ConfigError, ImagefsError
from .fs import ImageFS
from .fuse_ops import FuseOps
from .logflood import CollapseRepeats
from .malloc import keep_freed_memory
from .mountpoint import prepare as prepare_mountpoint
from .notify import notify
from .mountpoint import IMAGEFS_FSTYPE
from .mountpoint import probe as probe_mountpoint
from .mountpoint import unmount
from .retry import RetryPolicy
from .sources.choose import DirectOptions, SourceChooser
from .prewarm import Warmer
from .progress import human
from .profiles import BootProfiles, ProfileStore
from .status import snapshot
from .times import DataTimes

log = logging.getLogger(__name__)


def add_arguments(top, service_options: argparse.ArgumentParser) -> None:
    p = top.add_parser("mount", parents=[service_options], help="mount the images at MOUNTPOINT")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--nonempty", action="store_true",
                   help="mount over a directory that is not empty (hiding what is in it)")
    p.add_argument("--cache-dir", metavar="DIR", help=f"disk cache (default {default_cache_dir()})")
    p.add_argument("--cache-size", default="20G", metavar="SIZE",
                   help="disk cache bound (default 20G; 0 disables it)")
    p.add_argument("--cache-min-free", default="5%", metavar="SIZE|PERCENT",
                   help="free space the disk cache leaves on its filesystem (default 5%%)")
    p.add_argument("--memory-cache", default="256M", metavar="SIZE",
                   help="memory cache bound (default 256M)")
    p.add_argument("--block-size", default="256K", metavar="SIZE",
                   help="cache block size (default 256K)")
    p.add_argument("--readahead", default="64M", metavar="SIZE",
                   help="how far the mount fetches ahead of a sequential reader "
                        "(default 64M; 0 turns it off)")
    p.add_argument("--kernel-readahead", default="256K", metavar="SIZE",
                   help="the kernel's readahead on the mount (default 256K; 0 leaves the "
                        "kernel's own)")
    p.add_argument("--fetch-threads", type=int, default=8, metavar="N",
                   help="ranged reads (random access) in flight at once (default 8)")
    p.add_argument("--list-ttl", type=float, default=30.0, metavar="SECONDS",
                   help="how long a listing of images is trusted (default 30)")
    p.add_argument("--record-ttl", type=float, default=30.0, metavar="SECONDS",
                   help="how long an image's metadata is trusted (default 30)")
    p.add_argument("--read-deadline", type=float, default=30.0, metavar="SECONDS",
                   help="a read that cannot be served by then fails with EIO (default 30)")
    p.add_argument("--profile-dir", metavar="DIR",
                   help="boot profiles: what the first boot of an image read, replayed as a "
                        "prefetch on later opens (default <cache dir>/profiles; hosts may "
                        "share one)")
    p.add_argument("--profile-window", type=float, default=120.0, metavar="SECONDS",
                   help="how long after an image's first read its reads are recorded "
                        "(default 120; 0 records nothing)")
    p.add_argument("--allow-other", action="store_true", help="let other users read the mount")
    p.add_argument("--uid", metavar="USER", help="owner of every file (default: the mount's user)")
    p.add_argument("--gid", metavar="GROUP", help="group of every file (default: the mount's)")
    p.add_argument("--file-mode", default="0444", metavar="MODE",
                   help="permissions of the files (default 0444); the kernel enforces them")
    p.add_argument("--dir-mode", default="0555", metavar="MODE",
                   help="permissions of the directories (default 0555)")
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
    p.set_defaults(run=run_mount)

    u = top.add_parser("umount", help="unmount an imagefs mount")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    u.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    u.set_defaults(run=run_umount)


def config_from_args(args) -> MountConfig:
    kwargs = dict(cache_size=parse_size(args.cache_size),
                  cache_min_free=parse_free_space(args.cache_min_free),
                  memory_cache=parse_size(args.memory_cache),
                  block_size=parse_size(args.block_size), fetch_threads=args.fetch_threads,
                  max_readahead=parse_size(args.readahead),
                  read_ahead_kb=parse_size(args.kernel_readahead) // 1024,
                  list_ttl=args.list_ttl, record_ttl=args.record_ttl,
                  read_deadline=args.read_deadline, allow_other=args.allow_other,
                  uid=parse_user(args.uid) if args.uid else None,
                  gid=parse_group(args.gid) if args.gid else None,
                  file_mode=parse_mode(args.file_mode), dir_mode=parse_mode(args.dir_mode),
                  retry=RetryPolicy(deadline=args.read_deadline))
    if args.cache_dir:
        kwargs["cache_dir"] = Path(args.cache_dir).absolute()
    if args.profile_dir:
        kwargs["profile_dir"] = Path(args.profile_dir).absolute()
    kwargs["profile_window"] = args.profile_window
    return MountConfig(**kwargs)


def lock_cache_dir(cache_dir: Path) -> int | None:
    """Claim the cache directory, then hold ``<cache dir>/lock`` for the life of the
    mount (the fd is returned).  The lock is held through a read-only fd, so that the
    mount does not keep its cache's filesystem from being remounted read-only.  On a
    read-only cache directory the lock file is locked if it exists, and otherwise the
    mount goes without (None): nobody can write that cache, so sharing it is harmless."""
    claim(cache_dir)
    path = cache_dir / "lock"
    writable = True
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise ConfigError(f"cannot create {path}: {exc.strerror}; choose another "
                              "--cache-dir") from None
        writable = False
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        log.info("cache directory %s is read-only and has no lock file: mounting without "
                 "the lock", cache_dir)
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:  # EBADF: NFS locks need a writable fd
            if exc.errno != errno.EBADF or not writable:
                raise
            os.close(fd)
            fd = os.open(path, os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"cache directory {cache_dir} is in use by another imagefs mount "
                          f"(pid {holder}); give this mount its own --cache-dir") from None
    if not writable:
        log.info("cache directory %s is read-only: holding its lock without writing the pid",
                 cache_dir)
    return fd


def _identity(ctx) -> str:
    """`` as user U in project P`` where the context knows them."""
    parts = [f"user {ctx.user_id}" if ctx.user_id else "",
             f"project {ctx.project_id}" if ctx.project_id else ""]
    return (" as " + " in ".join(p for p in parts if p)) if any(parts) else ""


def _unwrap(group: BaseExceptionGroup) -> BaseException:
    """The one error a trio nursery's group carries (its reason), or the group."""
    leaves = []

    def walk(exc):
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                walk(sub)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    walk(group)
    return leaves[0] if len(leaves) == 1 else group


def _write_pid(cache_dir: Path) -> None:
    """Write this process's pid into the lock file (for a refused second mount to show);
    not on a read-only cache directory."""
    with contextlib.suppress(OSError):
        fd = os.open(cache_dir / "lock", os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)


def run_mount(args) -> int:
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
    lock_cache_dir(config.cache_dir)  # held (an open fd) until the process exits
    what = f"mounting {describe(opts)}{_identity(ctx)} at {mountpoint}"
    log.info("%s (cache %s)", what, config.cache_dir)
    if args.foreground and log.getEffectiveLevel() > logging.INFO:
        print(f"imagefs: {what}", file=sys.stderr)
    if args.foreground:
        _write_pid(config.cache_dir)
        return serve(api, ctx, config, direct, mountpoint, None, describe(opts), args.metrics,
                     args.purge_on_unmount, nova_base)
    log_file = Path(args.log) if args.log else config.cache_dir / "imagefs.log"
    try:  # fail here, with the reason, rather than in the daemon
        os.close(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    except OSError as exc:
        raise ConfigError(f"cannot open the log file {log_file}: {exc.strerror}; "
                          "give another with --log") from None
    return _daemonize(lambda ready: serve(api, ctx, config, direct, mountpoint, ready,
                                          describe(opts), args.metrics,
                                          args.purge_on_unmount, nova_base),
                      config.cache_dir, log_file)


def _daemonize(run, cache_dir: Path, log_file: Path) -> int:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:  # the parent: wait for the child's word
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            word = pipe.read().decode(errors="replace")
        if word.startswith("ready"):
            return 0
        print(f"imagefs: mount failed: {word.strip() or 'the daemon exited; see ' + str(log_file)}",
              file=sys.stderr)
        return 1
    os.close(read_end)
    os.setsid()
    os.umask(0o077)  # the log and cache files are the mount user's alone
    _write_pid(cache_dir)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.handlers.WatchedFileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s: "
                                           "%(message)s"))
    root.addHandler(handler)
    if root.level > logging.INFO:  # a daemon's log says what it did, not only what went wrong
        root.setLevel(logging.INFO)
    with open(os.devnull, "r+b") as null:
        for fd in (0, 1):
            os.dup2(null.fileno(), fd)
    stderr_log = open(log_file, "ab")  # faulthandler and stray prints land in the log
    os.dup2(stderr_log.fileno(), 2)
    pipe = os.fdopen(write_end, "wb")

    def ready(message: str = "ready") -> None:
        if pipe.closed:  # only the first word counts
            return
        with contextlib.suppress(OSError):
            pipe.write(message.encode())
            pipe.close()
    code = 1
    try:
        code = run(ready)
    except ImagefsError as exc:
        ready(str(exc))
        log.error("%s", exc)
    except BaseException as exc:
        ready(f"{type(exc).__name__}: {exc}")
        log.exception("the mount failed")
    finally:
        ready("the daemon stopped before the mount was ready")
        os._exit(code)


def serve(api, ctx, config: MountConfig, direct: DirectOptions, mountpoint: Path,
          ready, service: str = "", metrics_address: str | None = None,
          purge_on_unmount: bool = False, nova_base: Path | None = None) -> int:
    """Mount and serve until unmounted or signalled; 0 after a clean unmount.
    ``purge_on_unmount``: then remove the blocks of every image that is not public.
    ``nova_base``: keep Nova's base links there (``imagefs.nova``)."""
    faulthandler.enable()
    # Installed here, on the handlers of either mode (foreground or daemon).
    floods = CollapseRepeats().install(logging.getLogger().handlers)
    keep_freed_memory(config.block_size, config.memory_cache)
    # Not "ro": the kernel would refuse utime on data files, which Nova's image cache
    # needs (imagefs.times); every other change is refused by the daemon (EROFS).
    options = set(pyfuse3.default_options) | {"fsname=imagefs", "subtype=imagefs"}
    if config.allow_other:
        options.add("allow_other")
    memory = MemoryCache(config.memory_cache)
    times = DataTimes(config.cache_dir / "times")  # utime on data files, kept across mounts
    disk = DiskCache(config.cache_dir, config.cache_size, min_free=config.cache_min_free) \
        if config.cache_size > 0 else None
    if disk is not None:
        _warn_if_beyond_filesystem(config)

    notify(f"STATUS=mounting at {mountpoint}")
    chooser = SourceChooser(api, ctx, direct)
    log.log(logging.WARNING if chooser.warns() else logging.INFO, "%s", chooser.describe())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            blocks = BlockReader(lambda image, direct: chooser.open(image.id, image.size, direct),
                                 TieredCache(memory, disk), block_size=config.block_size,
                                 fetch_threads=config.fetch_threads,
                                 read_deadline=config.read_deadline, retry=config.retry,
                                 nursery=nursery)
            fs = ImageFS(api, ctx, config, blocks, times)
            profiles = BootProfiles(ProfileStore(config.profile_dir or
                                                 config.cache_dir / "profiles"),
                                    blocks, config.profile_window, nursery)
            fs.profiles = profiles
            warmer = Warmer(fs, blocks, profiles, nursery)
            if metrics_address:
                metrics.serve(metrics_address, blocks, memory, disk)
            # Signals are caught before the mount exists: a SIGTERM as soon as the
            # mount appears must unmount it, not kill the daemon.
            await nursery.start(_watch_signals)
            try:
                pyfuse3.init(FuseOps(fs, config.uid, config.gid), str(mountpoint), options)
            except RuntimeError as exc:
                raise ConfigError(f"cannot mount at {mountpoint}: {exc}") from exc
            started = time.monotonic()

            async def handle(request: dict) -> dict:
                op = request.get("op")
                if op == "status":
                    return snapshot(fs, blocks, memory, disk, service, started)
                if op in Warmer.OPS:
                    return await warmer.handle(request)
                if isinstance(op, str) and op.startswith("cache-"):
                    return await cachectl.answer(request, memory, disk)
                return {"error": f"unknown request {op!r}"}
            await nursery.start(control.serve, config.cache_dir, mountpoint, handle)
            try:
                nursery.start_soon(_when_mounted, mountpoint, config, ready)
                if nova_base is not None:
                    nursery.start_soon(nova.keep_links, nova.BaseLinks(nova_base, mountpoint),
                                       fs.listing)
                # The cluster's connection, made now, is not a first read's to wait for.
                nursery.start_soon(functools.partial(trio.to_thread.run_sync, chooser.connect,
                                                     abandon_on_cancel=True))
                await pyfuse3.main()
            except BaseException:
                pyfuse3.close(unmount=False)
                raise
            notify("STOPPING=1", "STATUS=unmounted")
            pyfuse3.close(unmount=True)
            nursery.cancel_scope.cancel()
            if config.profile_window > 0:
                profiles.save_all()
            log.info("served %d reads (%d bytes); blocks: %s; API calls: %s", fs.reads["requests"],
                     fs.reads["bytes"], blocks.stats, fs.api_calls)
            blocks.close()
            # The mount's latest word on each image, over what the indexes recorded.
            visibility.update({i.id: i.record.get("visibility") for i in fs.known_images()})

    visibility: dict[str, str | None] = {}
    try:
        try:
            trio.run(main)
        except BaseExceptionGroup as group:  # say the reason, not "ExceptionGroup"
            reason = _unwrap(group)
            if reason is group:
                raise
            raise reason from None
    finally:
        if disk is not None:
            disk.close()  # blocks still queued for the disk tier
            if purge_on_unmount:  # after close: nothing queued lands afterwards
                _purge_not_public(disk, visibility)
        chooser.close()
        floods.remove()
    log.info("unmounted %s", mountpoint)
    return 0


def _purge_not_public(disk: DiskCache, visibility: dict[str, str | None]) -> None:
    """Remove the image directories of every image that is not public: by the mount's
    record where it has one, else by the directory's index.  A directory whose image
    is unknown (no index, no visibility recorded) goes too: nothing says it may stay."""
    victims = []
    for image_dir in disk.all_dirs():
        about = disk.about(image_dir)
        seen = visibility.get(about.get("id"), about.get("visibility"))
        if seen != "public":
            victims.append(image_dir)
    freed = disk.evict_dirs(victims)
    log.info("--purge-on-unmount: removed the blocks of %d image%s that %s not public "
             "(%.1f MiB)", len(victims), "" if len(victims) == 1 else "s",
             "is" if len(victims) == 1 else "are", freed / 2**20)


def _warn_if_beyond_filesystem(config: MountConfig) -> None:
    try:
        st = os.statvfs(config.cache_dir)
    except OSError:
        return
    total = st.f_blocks * st.f_frsize
    if config.cache_size > total:
        log.warning("--cache-size %s is more than the size of the cache directory's "
                    "filesystem (%s): the disk tier is bounded by that filesystem, less "
                    "--cache-min-free %s", human(config.cache_size), human(total),
                    config.cache_min_free)


async def _watch_signals(task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            notify("STOPPING=1", "STATUS=unmounting")
            pyfuse3.terminate()
            return


async def _when_mounted(mountpoint: Path, config: MountConfig, ready) -> None:
    """Once the kernel answers for the mount: tune readahead, report ready."""
    st = await trio.to_thread.run_sync(os.stat, mountpoint)
    if config.read_ahead_kb:
        bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
        try:
            await trio.to_thread.run_sync(bdi.write_text, str(config.read_ahead_kb))
            log.info("kernel readahead for the mount set to %d KiB", config.read_ahead_kb)
        except OSError as exc:  # not root: the kernel's default stands
            log.info("cannot set the mount's readahead (%s): keeping the kernel's", exc)
    log.info("mounted at %s", mountpoint)
    notify("READY=1", f"STATUS=serving images at {mountpoint}")
    if ready:
        ready()


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
