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
when ``RangesRefused`` says a store cannot seek, are the caller's decisions
(``imagefs.blocks``).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Protocol

from ..errors import BackendUnavailable, ImagefsError


#: Kinds of source whose every request costs the service much more than its bytes
#: (Glance's API: authentication, database and policy on each, ~10 ms of CPU): a
#: stream asks them for long ranges (``imagefs.streams``).
COSTLY_REQUESTS = frozenset({"glance"})


class Unusable(ImagefsError):
    """A direct source cannot serve this image (the message says why): read it
    through the image service instead."""


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
