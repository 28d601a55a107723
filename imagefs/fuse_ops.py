"""The thin pyfuse3 adapter: calls ``ImageFS`` and turns every error into an errno.

pyfuse3 catches only ``FUSEError`` in a handler; anything else escapes into
its nursery and ends the mount.  So every handler goes through ``_errno``,
the one place errors become errnos:

=========================  ==========================================
``FsError``                its own errno (ENOENT, EROFS, EISDIR ...)
``ImageNotFound``          ENOENT; ESTALE for a read of an open file
``ImageNoData``            ESTALE (the image lost its data while open)
``ImageNotAuthorized``     EACCES
any other ``ImagefsError`` EIO (unreachable service, bad bytes ...)
anything else              EIO, logged with its traceback
=========================  ==========================================

The filesystem is read-only: every call that would change it answers EROFS,
except ``setattr`` of a ``data`` file's times alone (``utime``, which Nova's
image cache needs; ``imagefs.times``).
"""

from __future__ import annotations

import errno
import functools
import logging
import os

import pyfuse3

from . import metrics
from .errors import FsError, ImagefsError, ImageNoData, ImageNotAuthorized, ImageNotFound
from .fs import Attr, ImageFS

log = logging.getLogger(__name__)


def errno_for(exc: BaseException, reading: bool = False) -> int:
    if isinstance(exc, FsError):
        return exc.errno
    if isinstance(exc, ImageNotFound):
        return errno.ESTALE if reading else errno.ENOENT
    if isinstance(exc, ImageNoData):
        return errno.ESTALE
    if isinstance(exc, ImageNotAuthorized):
        return errno.EACCES
    return errno.EIO


def _errno(fn=None, *, reading: bool = False):
    """Run a handler with its errors turned into errnos (``errno_for``);
    ``@_errno(reading=True)`` for the read of an open file."""
    if fn is None:
        return functools.partial(_errno, reading=reading)

    @functools.wraps(fn)
    async def handler(self, *args):
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except (FsError, ImagefsError) as exc:
            code = errno_for(exc, reading)
            metrics.ERRORS[errno.errorcode.get(code, str(code))] += 1
            if code == errno.EIO:
                log.warning("%s%r: %s → EIO", fn.__name__, args[:3], exc)
            else:
                log.debug("%s%r: %s → %s", fn.__name__, args[:3], exc, errno.errorcode[code])
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            metrics.ERRORS["EIO"] += 1
            log.exception("%s%r failed unexpectedly; answering EIO", fn.__name__, args[:3])
            raise pyfuse3.FUSEError(errno.EIO) from None
    return handler


def _read_only(name):
    async def handler(self, *args, **kwargs):
        raise pyfuse3.FUSEError(errno.EROFS)
    handler.__name__ = name
    return handler


class FuseOps(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: ImageFS, uid: int | None = None, gid: int | None = None):
        super().__init__()
        self.fs = fs
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = attr.ino
        entry.generation = 0
        entry.entry_timeout = attr.timeout
        entry.attr_timeout = attr.timeout
        entry.st_mode = attr.mode
        entry.st_nlink = attr.nlink
        entry.st_uid, entry.st_gid = self.uid, self.gid
        entry.st_rdev = 0
        entry.st_size = attr.size
        entry.st_blksize = 1 << 20
        entry.st_blocks = (attr.size + 511) // 512
        entry.st_mtime_ns = entry.st_ctime_ns = attr.mtime_ns
        entry.st_atime_ns = attr.mtime_ns if attr.atime_ns is None else attr.atime_ns
        return entry

    @_errno
    async def lookup(self, parent_inode, name, ctx=None):
        return self._entry(await self.fs.lookup(parent_inode, os.fsdecode(name)))

    @_errno
    async def getattr(self, inode, ctx=None):
        return self._entry(await self.fs.getattr(inode))

    @_errno
    async def readlink(self, inode, ctx):
        return os.fsencode(self.fs.readlink(inode))

    async def forget(self, inode_list):
        pass  # inode numbers are never reused while mounted: nothing to free

    @_errno
    async def opendir(self, inode, ctx):
        return await self.fs.opendir(inode)

    @_errno
    async def readdir(self, fh, start_id, token):
        for name, attr, next_id in self.fs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._entry(attr), next_id):
                break

    @_errno
    async def releasedir(self, fh):
        self.fs.releasedir(fh)

    @_errno
    async def open(self, inode, flags, ctx):
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        fh, keep = await self.fs.open(inode, bool(writable), bool(flags & os.O_DIRECT))
        # metadata.json: a snapshot per open, served whole (direct_io) and not kept.
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=not keep)

    @_errno(reading=True)
    async def read(self, fh, off, size):
        return await self.fs.read(fh, off, size)

    @_errno
    async def release(self, fh):
        self.fs.release(fh)

    @_errno
    async def statfs(self, ctx):
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = st.f_bfree = st.f_bavail = 0
        st.f_files = self.fs.image_count + 1
        st.f_ffree = st.f_favail = 0
        st.f_namemax = 255
        return st

    @_errno
    async def setattr(self, inode, attr, fields, fh, ctx):
        """Times on a ``data`` file may be set (``utime``, for Nova's image cache);
        any other change (size, mode, owner) is refused."""
        if fields.update_size or fields.update_mode or fields.update_uid or fields.update_gid \
                or not (fields.update_atime or fields.update_mtime):
            raise FsError(errno.EROFS)
        return self._entry(await self.fs.set_times(
            inode, attr.st_atime_ns if fields.update_atime else None,
            attr.st_mtime_ns if fields.update_mtime else None))

    async def fsync(self, fh, datasync):
        pass  # nothing is ever written

    # No extended attributes.  ENOSYS (rather than ENOATTR per call) makes the
    # kernel stop asking: `ls -l` otherwise sends two getxattr requests per entry.
    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode, ctx):
        raise pyfuse3.FUSEError(errno.ENOSYS)

    for _name in ("mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link",
                  "write", "create", "setxattr", "removexattr"):
        locals()[_name] = _read_only(_name)
    del _name
