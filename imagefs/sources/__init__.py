"""Where an open image's bytes come from: one interface, one module per kind.

The mount reads blocks from a ``Source``; what is behind it is the source's
business.  Each kind lives in a module of its own and raises only
``imagefs.errors``:

- ``service``: the image service's data API, through a driver (Glance's
  ``/file``, or the embedded store);
- ``rbd``: Ceph RBD read with librbd, for images whose location is
  ``rbd://FSID/POOL/IMAGE/SNAP``;
- ``file``: a ``file://`` location on storage the host shares (opt-in);
- ``choose``: which of these serves an image, and the fallback to the
  service when a direct one is ``Unusable``.

A source is blocking (the mount calls it from worker threads) and thread
safe.  Its two reads are single tries; retrying, and choosing another way
when ``RangesRefused`` says a store cannot seek, are the caller's decisions:
the mount's (``imagefs.blocks``, which remembers it per image), and for the
API and downloads ``stream_at`` here, the one place that answers it there.

Kinds are named by the constants below (a service source's kind is its
driver's name); nothing else spells them.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Protocol

from ..errors import BackendUnavailable, RangesRefused

#: Source kinds: the image service's (``GLANCE``, ``LOCAL``: the driver's name) and
#: the direct ones, read straight from the image's store.
GLANCE, LOCAL, RBD, FILE = "glance", "local", "rbd", "file"

#: Sources whose bytes bypass the image service: a whole read of them is checked
#: against the image's hash (Glance checks its own).
DIRECT_KINDS = frozenset({RBD, FILE})

#: Kinds of source whose every request costs the service much more than its bytes
#: (Glance's API: authentication, database and policy on each): a stream asks
#: them for long ranges (``imagefs.streams``).
COSTLY_REQUESTS = frozenset({GLANCE})


class Source(Protocol):
    #: what serves the bytes, for logs and stats ("glance", "local", ...)
    kind: str

    def read(self, offset: int, length: int, timeout: float | None = None) -> bytes:
        """``length`` bytes at ``offset``, fewer only at the image's end.  One try.

        ``RangesRefused`` if the store cannot read at an offset;
        ``BackendUnavailable`` for what a retry may cure; any other
        ``ImagefsError`` is final.  ``timeout`` bounds each wait.
        """

    def stream(self, offset: int, end: int | None = None,
               timeout: float | None = None) -> Iterator[bytes]:
        """Bytes ``[offset, end)`` (to the image's end if None) as they arrive, in
        chunks of any size; errors as for ``read``, also part-way."""

    def close(self) -> None:
        """Release what the source holds (connections, open images)."""


@contextlib.contextmanager
def closing(chunks: Iterable[bytes]) -> Iterator[Iterator[bytes]]:
    """An iterator over ``chunks``, closed on exit if it can be (a generator's
    close ends its request)."""
    it = iter(chunks)
    try:
        yield it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def skip_bytes(chunks: Iterable[bytes], skip: int) -> Iterator[bytes]:
    """``chunks`` without their first ``skip`` bytes (how a store that cannot
    seek is read from an offset); ``BackendUnavailable`` if they end first."""
    with closing(chunks) as it:
        for chunk in it:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            yield chunk[skip:] if skip else chunk
            skip = 0
    if skip:
        raise BackendUnavailable(f"the stream ended {skip} bytes before the offset asked for")


def stream_at(open_stream: Callable[[int, "int | None"], Iterable[bytes]], offset: int,
              end: int | None = None) -> Iterator[bytes]:
    """Bytes ``[offset, end)`` from ``open_stream(offset, end)``; where the store
    refuses ranges (``RangesRefused``), from ``open_stream(0, None)``, skipped
    forward to ``offset`` (``BackendUnavailable`` if it ends before, when
    ``end`` is None) and cut at ``end`` (fewer bytes where the image ends).

    ``open_stream`` must refuse at once, as drivers' ``open_stream`` do (the
    answer to a ranged request is its status line).
    """
    try:
        return iter(open_stream(offset, end))
    except RangesRefused:
        if end is None:
            return skip_bytes(open_stream(0, None), offset)
        return _part(open_stream(0, None), offset, end)


def _part(chunks: Iterable[bytes], offset: int, end: int) -> Iterator[bytes]:
    """Bytes ``[offset, end)`` of ``chunks``, which start at the image's start;
    not a chunk more is asked of the store than needed."""
    position = 0
    with closing(chunks) as it:
        for chunk in it if end > offset else ():
            if position + len(chunk) > offset:
                yield chunk[max(0, offset - position):end - position]
            position += len(chunk)
            if position >= end:
                return
