"""Ceph RBD read directly with librbd, as Nova's libvirt driver does.

Glance keeps an image in RBD as ``rbd://FSID/POOL/IMAGE/SNAP`` (its
``direct_url`` and ``locations``) and cannot read it at an offset.  A host
with a Ceph client key reads the snapshot itself: ranged reads are
``Image.read`` calls, which librbd serves from the OSDs in parallel.

A stream (``RbdSource.stream``) keeps ``STREAM_DEPTH`` reads of
``STREAM_PIECE`` bytes in flight (``Image.aio_read``) and yields them in
order: one synchronous read at a time leaves the OSD, the messenger and the
copy into the buffer each waiting for the others.  Every read lies inside
the range asked for, and a stream that is closed waits for the reads it
started, so an abandoned stream costs at most what was asked for and no
read outlives it (nor the image it reads).

``RbdCluster`` is one connection to a cluster (librados is thread safe), with
an I/O context per pool.  ``RbdCluster.open(location)`` gives an
``RbdSource`` for one snapshot, opened read-only, or raises ``Unusable``
with the reason the direct path cannot serve it (no bindings, no conf,
another cluster's fsid, access denied, no such image or snapshot): the
caller then reads through Glance.  Once open, a failed read closes the image
and raises ``BackendUnavailable``; the next try reopens it.  A read denied or
not found after the open raises ``Unusable`` too, so that the caller can
fall back then.

The bindings are Debian's ``python3-rbd``/``python3-rados``; without them
imagefs runs, and this path is off.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import os
import threading
import urllib.parse
from typing import Iterator, Mapping

from ..errors import BackendUnavailable, ImagefsError, Unusable
from . import RBD

try:  # Debian's bindings, linked into the venv by scripts/setup
    import rados
    import rbd
except ImportError:  # pragma: no cover - depends on the host
    rados = rbd = None

log = logging.getLogger(__name__)

#: Bytes per read in a stream (four of the default 256 KiB blocks; a read is cut into blocks).
STREAM_PIECE = 1 << 20
#: Reads a stream keeps in flight.
STREAM_DEPTH = 8
#: Seconds to wait for the monitors when connecting.
CONNECT_TIMEOUT = 10


@dataclasses.dataclass(frozen=True)
class RbdLocation:
    fsid: str
    pool: str
    image: str
    snapshot: str

    @classmethod
    def parse(cls, url: str) -> "RbdLocation | None":
        """``rbd://FSID/POOL/IMAGE/SNAP`` (each part URL-quoted), else None."""
        if not url.startswith("rbd://"):
            return None
        parts = [urllib.parse.unquote(p) for p in url[len("rbd://"):].split("/")]
        if len(parts) != 4 or not all(parts):
            return None
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.pool}/{self.image}@{self.snapshot}"


@dataclasses.dataclass(frozen=True)
class CephOptions:
    """How to reach Ceph: ``--ceph-conf``, ``--ceph-user``, ``--ceph-keyring``."""
    conf: str | None = None
    user: str = "admin"
    keyring: str | None = None

    @classmethod
    def from_env(cls, conf: str | None = None, user: str | None = None,
                 keyring: str | None = None,
                 env: Mapping[str, str] = os.environ) -> "CephOptions":
        """Options win over ``$CEPH_CONF``/``$CEPH_USER``; the conf defaults to
        ``/etc/ceph/ceph.conf`` when it exists; the user to ``admin``."""
        conf = conf or env.get("CEPH_CONF") or None
        if conf is None and os.path.exists("/etc/ceph/ceph.conf"):
            conf = "/etc/ceph/ceph.conf"
        user = user or env.get("CEPH_USER") or "admin"
        if user.startswith("client."):
            user = user[len("client."):]
        return cls(conf, user, keyring)


def available() -> bool:
    return rbd is not None


def _errno(exc: BaseException) -> int | None:
    return getattr(exc, "errno", None)


def _unusable_errno(code: int | None) -> bool:
    return code is not None and abs(code) in (errno.EACCES, errno.EPERM, errno.ENOENT)


class RbdCluster:
    """One connection to the cluster in ``options.conf``, made on first use."""

    def __init__(self, options: CephOptions):
        self.options = options
        self._lock = threading.Lock()
        self._client = None
        self._ioctxs: dict[str, object] = {}
        self._broken: str | None = None  # why the cluster cannot be used, once known

    def __repr__(self) -> str:
        return f"RbdCluster({self.options.conf}, client.{self.options.user})"

    def _connect(self):
        """The connected client; ``Unusable`` if there is none to be had."""
        if self._client is not None:
            return self._client
        if self._broken:
            raise Unusable(self._broken)
        if rados is None:
            raise Unusable("the Ceph bindings (python3-rados, python3-rbd) are not installed")
        if not self.options.conf:
            raise Unusable("no Ceph configuration (--ceph-conf, $CEPH_CONF or "
                           "/etc/ceph/ceph.conf)")
        conf = {"keyring": self.options.keyring} if self.options.keyring else {}
        try:
            client = rados.Rados(conffile=self.options.conf, rados_id=self.options.user,
                                 conf=conf)
            client.connect(timeout=CONNECT_TIMEOUT)
        except rados.Error as exc:
            self._broken = (f"cannot connect to Ceph as client.{self.options.user} with "
                            f"{self.options.conf}: {exc}")
            raise Unusable(self._broken) from exc
        self._client = client
        log.info("connected to Ceph cluster %s as client.%s", client.get_fsid(),
                 self.options.user)
        return client

    def _ioctx(self, pool: str):
        ioctx = self._ioctxs.get(pool)
        if ioctx is None:
            try:
                ioctx = self._ioctxs[pool] = self._connect().open_ioctx(pool)
            except rados.Error as exc:
                raise Unusable(f"cannot open pool {pool!r}: {exc}") from exc
        return ioctx

    def connect(self) -> None:
        """Connect now rather than at the first open, whose read would wait for it
        (docs/performance.md, "Figures moved out of the code").  A failure is kept, as at an open: each image's first open then gives
        the reason and reads through the image service."""
        with self._lock:
            try:
                self._connect()
            except Unusable:
                pass

    def open(self, location: RbdLocation, size: int) -> "RbdSource":
        """A source for ``location``, checked: same cluster, readable, ``size`` bytes."""
        with self._lock:
            client = self._connect()
            fsid = client.get_fsid()
            if fsid != location.fsid:
                raise Unusable(f"the image is in cluster {location.fsid}, the Ceph "
                               f"configuration reaches {fsid}")
            ioctx = self._ioctx(location.pool)
        source = RbdSource(ioctx, location, size)
        source.check()
        return source

    def close(self) -> None:
        with self._lock:
            for ioctx in self._ioctxs.values():
                ioctx.close()
            self._ioctxs.clear()
            if self._client is not None:
                self._client.shutdown()
                self._client = None


class RbdSource:
    """One RBD snapshot, read-only; reopened after a failed read."""

    kind = RBD

    def __init__(self, ioctx, location: RbdLocation, size: int):
        self.ioctx, self.location, self.size = ioctx, location, size
        self._lock = threading.Lock()
        self._image = None

    def __repr__(self) -> str:
        return f"RbdSource({self.location})"

    def _open(self):
        with self._lock:
            if self._image is None:
                self._image = rbd.Image(self.ioctx, self.location.image,
                                        snapshot=self.location.snapshot, read_only=True)
            return self._image

    def _failed(self, image, exc: BaseException, what: str) -> ImagefsError:
        """Close ``image`` after an error; the error to raise for it."""
        with self._lock:
            if self._image is image and image is not None:
                self._image = None
                try:
                    image.close()
                except rbd.Error:
                    pass
        message = f"rbd {self.location}: {what}: {exc}"
        if _unusable_errno(_errno(exc)) or isinstance(exc, (rbd.ImageNotFound,
                                                            rbd.PermissionError)):
            return Unusable(message)
        return BackendUnavailable(message)

    def check(self) -> None:
        """``Unusable`` unless the snapshot opens, has the image's size and its
        first byte can be read (a key without read access fails here)."""
        image = None
        try:
            image = self._open()
            size = image.size()
            if size != self.size:
                raise Unusable(f"rbd {self.location} has {size} bytes, the image {self.size}")
            if size:
                image.read(0, 1)
        except (rbd.Error, rados.Error) as exc:
            error = self._failed(image, exc, "cannot open")
            raise Unusable(str(error)) from exc

    def read(self, offset: int, length: int, timeout: float | None = None) -> bytes:
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        image = None
        try:
            image = self._open()
            data = image.read(offset, length)
        except (rbd.Error, rados.Error) as exc:
            raise self._failed(image, exc, f"read at {offset}+{length}") from exc
        if len(data) != length:
            raise BackendUnavailable(f"rbd {self.location}: read at {offset} gave "
                                     f"{len(data)} of {length} bytes")
        return data

    def stream(self, offset: int, end: int | None = None,
               timeout: float | None = None) -> Iterator[bytes]:
        """Pieces of ``STREAM_PIECE`` bytes (aligned to it), ``STREAM_DEPTH`` of them
        read at once."""
        end = self.size if end is None else min(end, self.size)
        if offset >= end:
            return
        image = None
        pending: collections.deque[_Read] = collections.deque()
        failure: BaseException | None = None
        ahead = offset
        try:
            image = self._open()
            while offset < end:
                while ahead < end and len(pending) < STREAM_DEPTH:
                    length = min(STREAM_PIECE - ahead % STREAM_PIECE, end - ahead)
                    pending.append(_Read(image, ahead, length))
                    ahead += length
                read = pending.popleft()
                data = read.result()
                if len(data) != read.length:
                    raise BackendUnavailable(f"rbd {self.location}: read at {read.offset} "
                                             f"gave {len(data)} of {read.length} bytes")
                offset += len(data)
                yield data
        except (rbd.Error, rados.Error) as exc:
            failure = exc
        finally:
            for read in pending:  # before the image may be closed, and its buffers freed
                read.wait()
        if failure is not None:
            raise self._failed(image, failure, f"read at {offset}") from failure

    def close(self) -> None:
        with self._lock:
            image, self._image = self._image, None
        if image is not None:
            try:
                image.close()
            except rbd.Error:
                pass


class _Read:
    """One ``Image.aio_read`` in flight."""

    def __init__(self, image, offset: int, length: int):
        self.offset, self.length = offset, length
        self._data: list[bytes | None] = []
        # The callback runs in a librbd thread; it only keeps the bytes.
        self._completion = image.aio_read(offset, length,
                                          lambda _, data: self._data.append(data))

    def wait(self) -> None:
        try:
            self._completion.wait_for_complete_and_cb()
        except Exception:  # the callback cannot fail; nothing to report on a close
            pass

    def result(self) -> bytes:
        """The bytes read; ``rbd.Error`` if the read failed."""
        self._completion.wait_for_complete_and_cb()
        code = self._completion.get_return_value()
        if code < 0 or not self._data or self._data[0] is None:
            raise rbd.OSError(f"read at {self.offset}+{self.length} failed", errno=-code)
        return self._data[0]
