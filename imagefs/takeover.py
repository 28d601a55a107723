"""The serving daemon's side of ``imagefs.holder``: adopt a live FUSE connection.

libfuse answers every request with EIO until its session has processed a
``FUSE_INIT``, and the kernel sends ``INIT`` once per connection.  So the
daemon gives pyfuse3 a pipe as its device (``/dev/fd/N``: libfuse's
``fuse_session_mount`` then adopts the descriptor instead of mounting), and
the holder writes the kernel's ``INIT`` into that pipe when this daemon is to
start reading.  libfuse processes it and calls ``Operations.init()``; there,
``os.dup2`` puts the real ``/dev/fuse`` descriptor on the pipe's number, so
that libfuse's reply and every later read go to the kernel.  For the first
daemon the reply answers the kernel's ``INIT``; for a later one its request
id is one the kernel no longer knows, which the kernel answers with ENOENT
and libfuse ignores.

After a crash the new daemon then writes a ``FUSE_NOTIFY_RESEND``
notification (Linux 6.9, FUSE 7.40): the kernel queues again every request
the dead daemon had read and not answered.  Without it (an older kernel) those
requests stay unanswered until the connection is aborted: the readers that
sent them wait, every other request is served.

The holder hands the daemon its descriptors and settings in
``IMAGEFS_TAKEOVER`` (JSON); the daemon tells the holder where it is on a
status pipe, a word a line: ``prepared`` (ready to read), ``serving`` (it
reads the connection), ``released`` (it stopped reading, after SIGUSR1,
and answers what it had read before it exits).
"""

from __future__ import annotations

import json
import logging
import os
import time

from .fusedev import RESEND_MINOR, resend_notification
from .holder import TAKEOVER_ENV

log = logging.getLogger(__name__)



def _die_with(holder: int) -> None:
    """Be killed when the holder dies: a mount whose holder is gone ends, as a mount
    whose only process died does, rather than go on with nobody to restart its daemon."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != holder:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGKILL)


class Adopted:
    """A connection handed over by the holder."""

    def __init__(self, info: dict):
        self.init_fd: int = info["init_fd"]
        self.fuse_fd: int = info["fuse_fd"]
        self.status_fd: int = info["status_fd"]
        self.ready_fd: int | None = info.get("ready_fd")
        self.resend: bool = info["resend"]
        self.minor: int = info["minor"]
        self.holder: int = info["holder"]
        self.takeovers: int = info["takeovers"]
        self.serving = self.released = False
        for fd in (self.init_fd, self.fuse_fd, self.status_fd):
            os.set_inheritable(fd, False)
        _die_with(self.holder)

    @classmethod
    def from_environment(cls) -> "Adopted | None":
        """The hand-over this process was started for, or None (it mounts on its own)."""
        raw = os.environ.pop(TAKEOVER_ENV, None)
        return cls(json.loads(raw)) if raw else None

    @property
    def device(self) -> str:
        """What to give ``pyfuse3.init`` as the mount point."""
        return f"/dev/fd/{self.init_fd}"

    def tell(self, word: str) -> None:
        """Say ``word`` to the holder (it may be gone: then nobody listens)."""
        try:
            os.write(self.status_fd, word.encode() + b"\n")
        except OSError:
            pass

    def on_init(self) -> None:
        """``Operations.init()``: the connection replaces the pipe, then the kernel is
        asked to resend what a dead daemon had read."""
        os.dup2(self.fuse_fd, self.init_fd, inheritable=False)
        os.close(self.fuse_fd)
        if self.resend:
            if self.minor >= RESEND_MINOR:
                try:
                    os.write(self.init_fd, resend_notification())
                    log.info("took over the mount (takeover %d): the kernel resends what "
                             "the last daemon had read", self.takeovers)
                except OSError as exc:
                    log.error("the kernel refused FUSE_NOTIFY_RESEND (%s): requests the last "
                              "daemon had read stay unanswered", exc.strerror)
            else:
                log.warning("took over the mount; this kernel (FUSE 7.%d) cannot resend "
                            "requests: those the last daemon had read stay unanswered",
                            self.minor)
        else:
            log.info("took over the mount (takeover %d)", self.takeovers)
        self.serving = True
        self.tell("serving")



STARTED = time.time()


def daemon_status(adopted: Adopted | None) -> dict:
    """What ``imagefs status`` shows of the serving daemon and its holder."""
    from . import __version__

    return {"pid": os.getpid(), "version": __version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(STARTED)),
            "holder_pid": adopted.holder if adopted is not None else None,
            "takeovers": adopted.takeovers if adopted is not None else 0}


async def release(adopted: Adopted) -> None:
    """Stop reading the connection (the hand-over's new daemon reads it next) and tell
    the holder; requests already read are still answered, then ``pyfuse3.main`` returns."""
    import pyfuse3
    import trio

    adopted.released = True
    pyfuse3.terminate()
    # A worker woken just before the terminate reads once more (its read returns at
    # once: the connection was readable); only then may the new daemon read.
    with trio.CancelScope(shield=True):  # main() may return meanwhile: say it all the same
        await trio.sleep(0.05)
    adopted.tell("released")
    log.info("handed the mount over; answering the requests already read")
