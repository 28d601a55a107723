"""The mount: assemble the pieces, serve them with trio and pyfuse3, unmount cleanly.

``serve`` builds the tiers, the block reader, the filesystem, the boot profiles,
the warm-ups, the metrics and the control socket, mounts, and serves until the
mount is unmounted or the process is signalled: SIGINT and SIGTERM unmount
cleanly, and then ``serve`` returns 0.  It runs in the foreground or in a
daemon (``imagefs.daemon``) alike; ``ready`` is called once the kernel answers
for the mount.  Under systemd (``Type=notify``) it says ``READY=1`` then, and
``STOPPING=1`` when it unmounts (``imagefs.notify``).

``purge_on_unmount``: once the last queued block is written, the blocks of
every image that is not public leave the disk cache, for hosts where nothing
private may outlive the mount that read it.

The command that parses the options and chooses foreground or daemon is
``imagefs.commands.mount``.
"""

from __future__ import annotations

import faulthandler
import functools
import logging
import os
import signal
import time
from pathlib import Path

import pyfuse3
import trio

from . import cachectl, control, metrics, nova
from .blocks import BlockReader
from .cache import DiskCache, MemoryCache, TieredCache
from .cachelock import lock_cache_dir  # noqa: F401  (tests take the lock as a mount does)
from .config import MountConfig, config_from_args  # noqa: F401  (likewise)
from .connect import open_chooser
from .errors import ConfigError
from .fs import ImageFS
from .fuse_ops import FuseOps
from .logflood import CollapseRepeats
from .malloc import keep_freed_memory
from .notify import notify
from .prewarm import Warmer
from .profilectl import ProfileOps
from .profiles import BootProfiles, ProfileStore
from .profiles_published import ProfileStores, PublishedProfiles
from .progress import human
from .sources.choose import DirectOptions
from .status import snapshot
from .takeover import Adopted, daemon_status, release
from .times import DataTimes

log = logging.getLogger(__name__)


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


def serve(api, ctx, config: MountConfig, direct: DirectOptions, mountpoint: Path,
          ready, service: str = "", metrics_address: str | None = None,
          purge_on_unmount: bool = False, nova_base: Path | None = None,
          adopted: Adopted | None = None) -> int:
    """Mount and serve until unmounted or signalled; 0 after a clean unmount.
    ``purge_on_unmount``: then remove the blocks of every image that is not public.
    ``nova_base``: keep Nova's base links there (``imagefs.nova``).
    ``adopted``: serve the connection a holder hands over (``imagefs.takeover``)
    instead of mounting; SIGUSR1 then hands it over to the holder's next daemon."""
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
    chooser = open_chooser(api.default, ctx, direct, api.retry)
    log.log(logging.WARNING if chooser.warns() else logging.INFO, "%s", chooser.describe())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            blocks = BlockReader(lambda image, direct: chooser.open(image.id, image.size, direct),
                                 TieredCache(memory, disk), block_size=config.block_size,
                                 fetch_threads=config.fetch_threads,
                                 read_deadline=config.read_deadline, retry=config.retry,
                                 nursery=nursery)
            store = ProfileStores(ProfileStore(config.profile_dir or
                                               config.cache_dir / "profiles"),
                                  PublishedProfiles(api, ctx) if config.publish_profiles
                                  else None)
            profiles = BootProfiles(store, blocks, config.profile_window, nursery)
            fs = ImageFS(api, ctx, config, blocks, times, profiles)
            warmer = Warmer(fs, blocks, profiles, nursery)
            if metrics_address and adopted is not None and adopted.takeovers:
                nursery.start_soon(_serve_metrics_when_free, metrics_address, blocks, memory,
                                   disk)
            elif metrics_address:
                metrics.serve(metrics_address, blocks, memory, disk)
            # Signals are caught before the mount exists: a SIGTERM as soon as the
            # mount appears must unmount it, not kill the daemon.
            await nursery.start(_watch_signals, adopted)
            ops = FuseOps(fs, config.uid, config.gid)
            if adopted is not None:
                ops.init = adopted.on_init
            try:
                pyfuse3.init(ops, adopted.device if adopted else str(mountpoint), options)
            except RuntimeError as exc:
                raise ConfigError(f"cannot mount at {mountpoint}: {exc}") from exc
            started = time.monotonic()

            async def handle(request: dict) -> dict:
                op = request.get("op")
                if op == "status":
                    return {**snapshot(fs, blocks, memory, disk, service, started),
                            **daemon_status(adopted)}
                if op in Warmer.OPS:
                    return await warmer.handle(request)
                if op in ProfileOps.OPS:
                    return await ProfileOps(fs, profiles).handle(request)
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
                if adopted is not None:
                    adopted.tell("prepared")
                await pyfuse3.main()
            except BaseException:
                pyfuse3.close(unmount=False)
                raise
            if adopted is None or not adopted.released:  # not a hand-over: the end
                notify("STOPPING=1", "STATUS=unmounted")
            pyfuse3.close(unmount=adopted is None)  # a holder's mount is the holder's
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
    log.info("%s %s", "handed over" if adopted is not None and adopted.released else
             "unmounted" if adopted is None else "stopped serving", mountpoint)
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


async def _serve_metrics_when_free(address: str, *counters) -> None:
    """A daemon taking a mount over serves its metrics once the daemon before it (which
    answers its last requests meanwhile) has let the port go."""
    for attempt in range(240):
        try:
            metrics.serve(address, *counters)
            return
        except ConfigError as exc:
            if attempt == 0:
                log.info("%s: trying again until the last daemon has exited", exc)
            await trio.sleep(0.5)
    log.warning("no metrics on %s: the port stays taken", address)


async def _watch_signals(adopted: Adopted | None = None,
                         task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGUSR1:
                if adopted is not None:  # the holder's next daemon is ready
                    await release(adopted)
                    return
                continue
            log.info("%s: unmounting", signal.Signals(signum).name)
            notify("STOPPING=1", "STATUS=unmounting")
            pyfuse3.terminate()
            return


async def _when_mounted(mountpoint: Path, config: MountConfig, ready) -> None:
    """Once the kernel answers for the mount: tune readahead, report ready."""
    # Abandoned if cancelled: a daemon that stops serving before the answer (a holder's
    # mount stays mounted) must not wait for it.
    st = await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
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
