"""A token given as ``--os-auth-token`` leaves the process's command line.

Every local user can read ``/proc/PID/cmdline`` (``ps -ef``); only the
process's own user and root can read ``/proc/PID/environ``.  So an ``imagefs``
process whose command line carries ``--os-auth-token T`` or
``--os-auth-token=T`` re-executes itself, once and at once, with the same
command line minus that option and with T in its environment as
``OS_AUTH_TOKEN``.  ``IMAGEFS_TOKEN_FROM_ARGV`` tells the new process that T
was given as an option, so that T keeps an option's precedence (over
``--os-cloud`` and ``OS_AUTH_TOKEN_FILE``; refused with ``--store``).

Until the re-exec, which follows the parsing of the command line, the token
is visible as before.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

log = logging.getLogger(__name__)

OPTION = "--os-auth-token"
MARKER = "IMAGEFS_TOKEN_FROM_ARGV"


def split_token(words: Sequence[str]) -> tuple[list[str], str | None]:
    """``words`` without each ``--os-auth-token T`` and ``--os-auth-token=T``,
    and the last T (None if there is none).  Words after ``--`` are kept as
    they are.  ``words`` must be a command line argparse accepted, so that the
    word after the option is its value."""
    kept: list[str] = []
    token = None
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            kept.extend(words[i:])
            break
        if word == OPTION and i + 1 < len(words):
            token = words[i + 1]
            i += 2
            continue
        if word.startswith(OPTION + "="):
            token = word[len(OPTION) + 1:]
        else:
            kept.append(word)
        i += 1
    return kept, token


def hide_token() -> None:
    """Re-execute this process without the token on its command line, if it
    carries one; return only if it does not (or the re-exec failed, logged)."""
    if os.environ.get(MARKER):
        return
    ours = len(sys.argv) - 1  # the words after the program, as sys.argv has them
    orig = list(sys.orig_argv)
    head, words = orig[:len(orig) - ours], orig[len(orig) - ours:]
    if ours <= 0 or words != sys.argv[1:]:
        return  # cannot tell the program's own words from the interpreter's
    kept, token = split_token(words)
    if token is None:
        return
    env = dict(os.environ, OS_AUTH_TOKEN=token, **{MARKER: "1"})
    try:
        os.execve(sys.executable, [*head, *kept], env)
    except OSError as exc:
        log.warning("cannot hide the token from the command line (re-executing %s: %s); "
                    "other users can read it", sys.executable, exc.strerror)


def token_from_argv() -> str | None:
    """The token a re-exec by ``hide_token`` moved from the command line into
    ``OS_AUTH_TOKEN``, or None if this process was not started so."""
    if os.environ.pop(MARKER, None) is None:
        return None
    return os.environ.get("OS_AUTH_TOKEN") or None
