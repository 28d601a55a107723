"""A minimal pyfuse3 filesystem served through ``imagefs.takeover``, for the holder's tests.

One file, ``/file``, whose 4 KiB block k is ``pattern(k)``.  While the file named
by ``SURVIVE_SLOW`` exists, every read waits that file's number of seconds first
(a read the test can kill the daemon under).  ``SURVIVE_FAIL``: while that file
exists the daemon exits with status 3 at once (a daemon that cannot start).
``SURVIVE_READ_OWN``: if that file exists, the daemon removes it and one of its
threads reads the mount (the mount point is in ``$SURVIVE_SLOW.mnt``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import sys

import pyfuse3
import trio

from imagefs.takeover import Adopted, release

SIZE = 64 << 20
FILE_INO = 2


def pattern(start: int, size: int) -> bytes:
    out = bytearray()
    first = start // 4096
    for k in range(first, (start + size + 4095) // 4096):
        out += hashlib.sha256(str(k).encode()).digest() * 128
    skip = start - first * 4096
    return bytes(out[skip:skip + size])


class Ops(pyfuse3.Operations):
    def _attr(self, ino):
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = (stat.S_IFDIR | 0o555) if ino == 1 else (stat.S_IFREG | 0o444)
        a.st_size = 0 if ino == 1 else SIZE
        a.st_nlink = 1
        a.entry_timeout = a.attr_timeout = 3600
        return a

    async def getattr(self, inode, ctx=None):
        if inode not in (1, FILE_INO):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent, name, ctx=None):
        if parent != 1 or name != b"file":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INO)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):
        slow = os.environ.get("SURVIVE_SLOW")
        if slow and os.path.exists(slow):
            await trio.sleep(float(open(slow).read() or 1))
        return pattern(off, max(0, min(size, SIZE - off)))


def _read_own_mount(path: str) -> None:
    """A thread of the daemon reads its own mount (which it then answers, slowly)."""
    import threading
    import time

    def run():
        time.sleep(0.5)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        os.pread(fd, 4096, 40 << 20)
    threading.Thread(target=run, daemon=True).start()


def main() -> int:
    fail = os.environ.get("SURVIVE_FAIL")
    if fail and os.path.exists(fail):
        return 3
    own = os.environ.get("SURVIVE_READ_OWN")
    if own and os.path.exists(own):
        os.unlink(own)  # the first daemon only
        _read_own_mount(open(os.environ["SURVIVE_SLOW"] + ".mnt").read())
    adopted = Adopted.from_environment()
    ops = Ops()
    ops.init = adopted.on_init
    pyfuse3.init(ops, adopted.device, {"ro"})

    async def run():
        async with trio.open_nursery() as nursery:
            async def watch(task_status=trio.TASK_STATUS_IGNORED):
                with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM) as signals:
                    task_status.started()
                    async for signum in signals:
                        if signum == signal.SIGUSR1:
                            await release(adopted)
                        else:
                            pyfuse3.terminate()
                        return
            await nursery.start(watch)
            adopted.tell("prepared")
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    trio.run(run)
    pyfuse3.close(unmount=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
