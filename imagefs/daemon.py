"""Running in the background: fork, the readiness word on a pipe, logs to a file.

``daemonize(run, log_file)`` forks.  The parent waits on a pipe for the child's
first word: ``ready`` (the parent returns 0, so a script can use what the
child serves as soon as the command returns) or a reason (printed on stderr
as ``imagefs: mount failed: REASON``, and the parent returns 1).  The child
starts a session of its own, takes umask 077 (its log and files are its
user's alone), logs to ``log_file`` at INFO or below, points stdin and stdout
at /dev/null and stderr at the log (faulthandler's dumps and stray prints
land there), then calls ``run(ready)`` and exits with its code.

``ready(message="ready")`` sends the word; only the first counts.  Whatever
ends the child before it said a word says one for it: an ``ImagefsError``'s
message, another exception's type and message, or that the daemon stopped.
The parent's words are the mount's; nothing else here knows what is served.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Callable

from .errors import ImagefsError

log = logging.getLogger(__name__)

#: ``ready(message="ready")``: the child's word to the parent.
Ready = Callable[..., None]

LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s"


def daemonize(run: Callable[[Ready], int], log_file: Path) -> int:
    """Fork; in the child, ``run(ready)`` and exit with its code.  In the parent,
    0 once the child said ready, 1 (with the reason on stderr) if it did not."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return _wait_for_word(read_end, log_file)
    os.close(read_end)
    os.setsid()
    os.umask(0o077)  # the log and cache files are the mount user's alone
    log_to_file(log_file)
    ready = ReadyPipe(write_end)
    code = 1
    try:
        code = run(ready)
    except ImagefsError as exc:
        ready(str(exc))
        log.error("%s", exc)
    except BaseException as exc:
        ready(f"{type(exc).__name__}: {exc}")
        log.exception("the mount failed")
    finally:
        ready("the daemon stopped before the mount was ready")
        os._exit(code)


def _wait_for_word(read_end: int, log_file: Path) -> int:
    """The parent's side: read the child's word until the pipe closes."""
    with os.fdopen(read_end, "rb") as pipe:
        word = pipe.read().decode(errors="replace")
    if word.startswith("ready"):
        return 0
    print(f"imagefs: mount failed: {word.strip() or 'the daemon exited; see ' + str(log_file)}",
          file=sys.stderr)
    return 1


class ReadyPipe:
    """The child's side of the pipe: ``ready(message)`` writes the first word and
    closes it; later words are dropped."""

    def __init__(self, fd: int):
        self._pipe = os.fdopen(fd, "wb")

    def __call__(self, message: str = "ready") -> None:
        if self._pipe.closed:  # only the first word counts
            return
        with contextlib.suppress(OSError):
            self._pipe.write(message.encode())
            self._pipe.close()


def log_to_file(log_file: Path) -> None:
    """Send the root logger (at INFO at least: a daemon's log says what it did, not
    only what went wrong) to ``log_file``, stdin and stdout to /dev/null, and
    stderr to the end of ``log_file``."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.handlers.WatchedFileHandler(log_file)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    with open(os.devnull, "r+b") as null:
        for fd in (0, 1):
            os.dup2(null.fileno(), fd)
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 2)  # faulthandler and stray prints land in the log
    os.close(fd)
