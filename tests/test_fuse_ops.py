"""The pyfuse3 adapter: every error becomes an errno, nothing escapes."""

from __future__ import annotations

import errno
import os

import pyfuse3
import pytest
import trio

from imagefs import errors
from imagefs.errors import FsError
from imagefs.fs import Attr
from imagefs.fuse_ops import FuseOps, errno_for


class BrokenFS:
    """A filesystem whose every call fails in the way it is told."""

    image_count = 0

    def __init__(self, exc):
        self.exc = exc

    async def lookup(self, parent, name):
        raise self.exc

    async def getattr(self, ino):
        raise self.exc

    async def read(self, fh, off, size):
        raise self.exc

    async def open(self, ino, writable, direct=False):  # ImageFS.open's signature
        raise self.exc


@pytest.mark.parametrize("exc, code", [
    (FsError(errno.ENOENT), errno.ENOENT),
    (errors.ImageNotFound("gone"), errno.ENOENT),
    (errors.ImageNoData("no data"), errno.ESTALE),
    (errors.ImageNotAuthorized("no"), errno.EACCES),
    (errors.BackendUnavailable("down"), errno.EIO),
    (errors.ImageChecksumMismatch("bad"), errno.EIO),
    (RuntimeError("a bug"), errno.EIO),
    (KeyError("a bug"), errno.EIO),
])
def test_errors_become_errnos(exc, code, caplog):
    ops = FuseOps(BrokenFS(exc))

    async def main():
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(1, b"x", None)
        assert e.value.errno == code
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getattr(5, None)
        assert e.value.errno == code
    trio.run(main)
    if isinstance(exc, (RuntimeError, KeyError)):
        assert "failed unexpectedly" in caplog.text  # logged with its traceback


def test_a_vanished_image_is_estale_for_reads_of_open_files():
    ops = FuseOps(BrokenFS(errors.ImageNotFound("deleted")))

    async def main():
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.read(1, 0, 10)
        assert e.value.errno == errno.ESTALE
    trio.run(main)
    assert errno_for(errors.ImageNotFound("x"), reading=True) == errno.ESTALE


def test_only_reads_turn_a_vanished_image_into_estale():
    ops = FuseOps(BrokenFS(errors.ImageNotFound("deleted")))

    async def main():
        for call in (ops.open(5, os.O_RDONLY | os.O_DIRECT, None), ops.getattr(5, None),
                     ops.lookup(1, b"x", None)):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await call
            assert e.value.errno == errno.ENOENT
    trio.run(main)


@pytest.mark.parametrize("name", ["write", "create", "mkdir", "unlink", "rmdir", "rename",
                                  "symlink", "link", "mknod", "setxattr",
                                  "removexattr"])
def test_changes_are_refused_read_only(name):
    ops = FuseOps(BrokenFS(RuntimeError()))

    async def main():
        with pytest.raises(pyfuse3.FUSEError) as e:
            await getattr(ops, name)(1, 2, 3)
        assert e.value.errno == errno.EROFS
    trio.run(main)


def test_attributes_are_translated():
    ops = FuseOps(BrokenFS(None))
    entry = ops._entry(Attr(ino=17, mode=0o100444, size=12345, mtime_ns=10**18, nlink=1,
                            timeout=5.0))
    assert (entry.st_ino, entry.st_mode, entry.st_size) == (17, 0o100444, 12345)
    assert entry.st_mtime_ns == 10**18 and entry.attr_timeout == 5.0
    assert entry.st_blocks == (12345 + 511) // 512
