"""Single flight per block, and the failure grace.

One fetch per block however many readers want it: a **flight**.  Readers
wait on it until their own deadline.  A flight has the deadline of the read
that started it and is abandoned then: its readers get ``BackendUnavailable``
(EIO), and the next reader starts a new flight.  A reader that joined a
flight and still has time when it fails starts a new one (``wait``).

The failure grace: a flight's failure also answers the readers of its block
that arrive within ``FAILURE_GRACE`` seconds after it (``failed_recently``).
The kernel re-issues a failed buffered readahead at once as a synchronous
read of the same page, which would otherwise wait a second full deadline.
It does not do so for a file opened ``O_DIRECT``: a re-read there is the
application's, after the outage may have ended, so the caller skips the
grace for those readers.

Everything here runs on the trio thread.  ``complete`` and ``fail`` are
idempotent: between an ``await`` and the next line another task may have
settled the same flight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .cache import BlockKey
from .errors import BackendUnavailable

if TYPE_CHECKING:
    from .streams import Stream

#: Seconds a failed flight answers new readers of its block (see the docstring).
FAILURE_GRACE = 0.5
#: Failures remembered before the expired ones are swept.
_SWEEP_AT = 1024


class Flight:
    """One block on its way; readers wait on ``done``."""

    def __init__(self, key: BlockKey, deadline: float):
        self.key, self.deadline = key, deadline
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self.stream: Stream | None = None  # the stream it waits for, if any


class Flights:
    """The blocks on their way, and the recent failures, by ``BlockKey``."""

    def __init__(self) -> None:
        self._flights: dict[BlockKey, Flight] = {}
        self._failed: dict[BlockKey, tuple[float, BaseException]] = {}

    def get(self, key: BlockKey) -> Flight | None:
        return self._flights.get(key)

    def __contains__(self, key: BlockKey) -> bool:
        return key in self._flights

    def busy(self, image_id: str) -> bool:
        """Whether a block of the image is on its way."""
        return any(key.image_id == image_id for key in self._flights)

    def new(self, key: BlockKey, deadline: float) -> Flight:
        """A new flight for ``key`` (the caller sends it on its way)."""
        flight = self._flights[key] = Flight(key, deadline)
        return flight

    def failed_recently(self, key: BlockKey) -> BaseException | None:
        """The error of the block's flight that failed less than ``FAILURE_GRACE``
        seconds ago, if any."""
        failed = self._failed.get(key)
        if failed is None:
            return None
        if trio.current_time() - failed[0] < FAILURE_GRACE:
            return failed[1]
        del self._failed[key]
        return None

    def complete(self, flight: Flight, data: bytes) -> None:
        if flight.done.is_set():
            return
        flight.data = data
        self._settle(flight)

    def fail(self, flight: Flight, error: BaseException, remember: bool = True) -> None:
        """Fail the flight's readers; ``remember``: and readers of its block for
        ``FAILURE_GRACE`` (not for a warm-up's: a reader then tries for itself)."""
        if flight.done.is_set():
            return
        flight.error = error
        self._settle(flight)
        if not remember:
            return
        now = trio.current_time()
        if len(self._failed) > _SWEEP_AT:
            self._failed = {k: v for k, v in self._failed.items()
                            if now - v[0] < FAILURE_GRACE}
        self._failed[flight.key] = (now, error)

    def _settle(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        if flight.stream is not None:
            flight.stream.detach(flight.key.index, flight)
        flight.stream = None
        flight.done.set()

    async def wait(self, flight: Flight, deadline: float, late: Callable[[], BaseException],
                   again: Callable[[Flight], bytes | Flight]) -> bytes:
        """The block, once ``flight`` has it, by ``deadline`` (else ``late()`` is
        raised).  When a flight an earlier reader started gives up while this
        reader has time left, ``again(flight)`` gives the block (cached meanwhile)
        or the flight to wait for next."""
        while True:
            with trio.move_on_at(deadline):
                await flight.done.wait()
            if not flight.done.is_set():
                if trio.current_time() >= flight.deadline:
                    self.fail(flight, late())
                raise late()
            if flight.error is None:
                return flight.data
            if not isinstance(flight.error, BackendUnavailable) or flight.deadline >= deadline:
                raise flight.error  # final, or this reader's own flight gave up
            found = again(flight)
            if isinstance(found, bytes):
                return found
            flight = found
