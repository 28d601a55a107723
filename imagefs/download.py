"""Downloads: an image's verified bytes into a file object or a file.

``API.download(context, id_or_uri, data=None, dest_path=None)`` has one
contract, whatever the arguments; this module keeps it:

- exactly one of ``data`` (a writable binary file object) and ``dest_path``
  (a path) must be given; neither or both is ``ImageBadRequest``;
- the bytes are checked against ``os_hash_value`` with ``os_hash_algo`` when
  the image has one, else against ``checksum`` (md5), and always against
  ``size``; a mismatch raises ``ImageChecksumMismatch``;
- a connection lost mid-stream resumes where it stopped (a ``Range``
  request; on stores that refuse ranges, a new stream skipped forward), within
  the retry policy, rather than starting again or failing;
- with ``dest_path``, the file appears only complete and verified: bytes go to
  a temporary file beside it (``imagefs.atomic``), which is fsync'ed and
  renamed into place; on any failure the temporary file is removed and
  ``dest_path`` is untouched.  The temporary file is 0600 while it fills
  (others must not read a half-checked image); the file that appears has the
  mode a new file would, 0666 less the umask.  A ``dest_path`` whose
  directory is missing, or that is a directory, is ``ConfigError`` before
  anything is asked of the service;
- with ``data``, bytes are written to it as they arrive; on failure what was
  written stays there (the caller owns the file) and the error is raised;
- it returns the image's record, the one the bytes were verified against;
- with a ``direct`` hook (``imagefs image download --direct``), the bytes come
  straight from the image's store where its location allows, and are
  verified the same way.

``Downloader.stream`` (the API's ``stream``) is the resuming part alone:
bytes from an offset, unverified.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, BinaryIO, Callable, Iterator

from .atomic import WholeFile
from .context import RequestContext
from .drivers.base import Driver
from .errors import BackendUnavailable, ConfigError, ImageBadRequest, ImageChecksumMismatch, \
    ImageNoData
from .retry import Retrier, RetryPolicy, call_with_retries
from .sources import Source, stream_at

log = logging.getLogger(__name__)

#: progress(image_id, bytes done, bytes in all or None)
Progress = Callable[[str, int, "int | None"], None]
#: direct(context, image_id, size): a source that reads the image's bytes straight
#: from its store (``imagefs.sources.choose``), or None to read them through the service.
DirectSource = Callable[[RequestContext, str, int], "Source | None"]


class Downloader:
    """Downloads and resuming streams for one ``API``: its retry policy, its
    progress callback, its direct hook."""

    def __init__(self, retry: RetryPolicy = RetryPolicy(), progress: Progress | None = None,
                 direct: DirectSource | None = None):
        self.retry, self.progress, self.direct = retry, progress, direct

    def download(self, context: RequestContext, driver: Driver, image_id: str,
                 data: BinaryIO | None = None,
                 dest_path: str | os.PathLike | None = None) -> dict[str, Any]:
        """Write the image's verified bytes to ``data`` or ``dest_path`` (see the
        module docstring); returns the record."""
        if (data is None) == (dest_path is None):
            raise ImageBadRequest("download needs exactly one of data (a file object) "
                                  "and dest_path")
        if data is not None:
            return self._transfer(context, driver, image_id, data.write)
        with _whole_file(os.fspath(dest_path)) as out:
            record = self._transfer(context, driver, image_id, out.write)
            out.commit()
        return record

    def stream(self, context: RequestContext, driver: Driver, image_id: str,
               offset: int = 0) -> Iterator[bytes]:
        """The image's bytes from ``offset`` through the service, resumed after
        failures within the policy."""
        def open_at(start: int) -> Iterator[bytes]:
            return stream_at(lambda o, e: driver.open_stream(context, image_id, o, e), start)
        return self._resume(open_at, image_id, offset)

    def _transfer(self, context, driver, image_id, write) -> dict[str, Any]:
        record = call_with_retries(lambda: driver.get(context, image_id, False), self.retry,
                                   f"get image {image_id}")
        if record["status"] != "active":
            raise ImageNoData(f"image {image_id} is {record['status']} and has no data")
        verifier = Verifier(record)
        total = record.get("size")
        source = self.direct(context, image_id, total or 0) if self.direct else None
        chunks = self.stream(context, driver, image_id) if source is None else \
            self._from_source(source, image_id)
        for chunk in chunks:
            write(chunk)
            verifier.update(chunk)
            if self.progress:
                self.progress(image_id, verifier.size, total)
        verifier.check()
        return record

    def _from_source(self, source: Source, image_id: str) -> Iterator[bytes]:
        """A direct source's bytes from the start, resumed after failures within
        the policy (a source gives way to the service on its own when it must)."""
        try:
            yield from self._resume(source.stream, image_id, 0)
        finally:
            source.close()

    def _resume(self, open_at: Callable[[int], Iterator[bytes]], image_id: str,
                offset: int) -> Iterator[bytes]:
        """The bytes ``open_at(offset)`` streams, opened again where they stopped
        after a ``BackendUnavailable`` (at the open or mid-body), within the policy."""
        retrier = Retrier(self.retry, on_retry=lambda exc, delay: log.warning(
            "image %s: %s; resuming at byte %d in %.2fs", image_id, exc, offset, delay))
        try:
            for chunk in retrier.iterate(lambda: open_at(offset)):
                offset += len(chunk)
                yield chunk
        except BackendUnavailable as exc:
            log.warning("image %s: giving up at byte %d after %d tries: %s", image_id, offset,
                        retrier.tries, exc)
            raise


class Verifier:
    """Hashes bytes as they pass and checks them against a record."""

    def __init__(self, record: dict[str, Any]):
        self.record = record
        algo, value = record.get("os_hash_algo"), record.get("os_hash_value")
        if algo and value:
            try:
                self.hash, self.expected = hashlib.new(algo), value
            except ValueError:
                raise ImageBadRequest(f"image {record['id']}: unknown hash algorithm "
                                      f"{algo!r}") from None
        elif record.get("checksum"):
            self.hash, self.expected = hashlib.md5(), record["checksum"]
        else:
            self.hash, self.expected = None, None
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.hash is not None:
            self.hash.update(chunk)

    def check(self) -> None:
        image_id, want = self.record["id"], self.record.get("size")
        if want is not None and self.size != want:
            raise ImageChecksumMismatch(f"image {image_id}: got {self.size} bytes, "
                                        f"expected {want}")
        if self.hash is None:
            log.warning("image %s has no checksum; only its size was verified", image_id)
        elif self.hash.hexdigest() != self.expected:
            raise ImageChecksumMismatch(f"image {image_id}: {self.hash.name} of the downloaded "
                                        f"bytes is {self.hash.hexdigest()}, expected {self.expected}")


def _whole_file(dest_path: str) -> WholeFile:
    """The file that becomes ``dest_path`` (synced, 0666 less the umask), or
    ConfigError if it cannot be written there."""
    directory = os.path.dirname(os.path.abspath(dest_path))
    if os.path.isdir(dest_path):
        raise ConfigError(f"{dest_path} is a directory: give the file to write")
    if not os.path.isdir(directory):
        raise ConfigError(f"cannot write {dest_path}: directory {directory} does not exist")
    try:
        return WholeFile(dest_path, mode=0o666 & ~_umask(), sync=True)
    except OSError as exc:
        raise ConfigError(f"cannot write {dest_path}: {exc.strerror}") from exc


def _umask() -> int:
    """This process's umask, read without changing it (os.umask sets it, and
    another thread's new file could be made under the stand-in)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
