"""systemd's readiness protocol, without systemd: datagrams to ``$NOTIFY_SOCKET``.

With ``Type=notify`` a unit is started once its main process says
``READY=1``; ``STATUS=`` lines show in ``systemctl status``; ``STOPPING=1``
says it is shutting down.  Outside systemd (no ``NOTIFY_SOCKET``) this does
nothing.  A socket that cannot be reached costs a debug line, never the mount.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) in one datagram; whether it went."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # the abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:
        log.debug("cannot notify %s: %s", address, exc)
        return False
    return True
