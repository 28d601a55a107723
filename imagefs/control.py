"""The running mount's control socket: ``imagefs status`` and ``cache`` ask the daemon.

The daemon listens on ``<cache dir>/control.sock`` (0600: only the mount's
user, and root, may ask).  A request is one line of JSON, ``{"op": ...}``;
the answer is one line of JSON, with ``"error"`` when the request failed.
The ops: ``status`` (``imagefs.status``); ``cache-list``, ``cache-evict``
with ``"ids"``, and ``cache-purge`` (``imagefs.cachectl``).
So that a mount point is enough to find its daemon, the daemon also links
the socket from a registry, ``/run/imagefs`` for root (else
``$XDG_RUNTIME_DIR/imagefs``, else ``/tmp/imagefs-<uid>``), under a name
made from the mount point's path; the link is removed at unmount.

The server runs on the mount's trio loop, so it reads the mount's state
without locks; the client is blocking, for the command line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable

from .errors import ConfigError, ImagefsError

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 << 10
TIMEOUT = 10.0


def registry_dir() -> Path:
    if os.getuid() == 0:
        return Path("/run/imagefs")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "imagefs" if runtime else Path(f"/tmp/imagefs-{os.getuid()}")


def registry_entry(mountpoint: Path) -> Path:
    # The mount point itself is never resolved: before the mount answers, a lookup
    # of it would wait for the daemon that is asking.
    where = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(mountpoint))),
                         os.path.basename(os.path.abspath(mountpoint)))
    digest = hashlib.sha256(os.fsencode(where)).hexdigest()[:32]
    return registry_dir() / f"{digest}.sock"


# ---- the daemon's side (trio) -----------------------------------------------------
async def serve(cache_dir: Path, mountpoint: Path,
                handle: Callable[[dict], Awaitable[dict]], task_status=None) -> None:
    """Answer requests until cancelled; ``task_status.started()`` once listening."""
    import trio

    path = cache_dir / SOCKET_NAME
    with contextlib.suppress(OSError):  # absent, or a read-only cache: bind says which
        path.unlink()  # left by a mount that died
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(str(path))
    except OSError as exc:  # a read-only cache (warned of already), a path too long ...
        sock.close()
        log.log(logging.INFO if exc.errno == errno.EROFS else logging.WARNING,
                "no control socket at %s (%s): imagefs status cannot reach this mount",
                path, exc.strerror or exc)
        if task_status is not None:
            task_status.started()
        await trio.sleep_forever()
    finally:
        os.umask(old)
    sock.listen(16)
    ours = os.stat(path).st_ino  # a holder's next daemon binds the same path: not ours
    link = _register(path, mountpoint)
    if task_status is not None:
        task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await sock.accept()
                except OSError as exc:  # out of file descriptors, say: not the mount's end
                    log.warning("control socket: %s", exc)
                    await trio.sleep(1)
                    continue
                nursery.start_soon(_answer, conn, handle)
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino != ours:
                return
            path.unlink()
        if link is not None:
            with contextlib.suppress(OSError):
                if os.readlink(link) == str(path):
                    link.unlink()


def _register(path: Path, mountpoint: Path) -> Path | None:
    link = registry_entry(mountpoint)
    try:
        link.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(path)
        return link
    except OSError:
        return None  # status then needs --cache-dir


async def _answer(conn, handle) -> None:
    """Read one request from ``conn``, answer it; never raises (a bad client, or a
    bug in a handler, must not take the mount down)."""
    import trio

    stream = trio.SocketStream(conn)
    try:
        async with stream:
            data = b""
            with trio.move_on_after(TIMEOUT):
                while b"\n" not in data and len(data) < MAX_REQUEST:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    data += chunk
            try:
                request = json.loads(data.split(b"\n", 1)[0] or b"{}")
                reply = await handle(request) if isinstance(request, dict) else \
                    {"error": "a request is a JSON object"}
            except (ValueError, ImagefsError) as exc:
                reply = {"error": str(exc)}
            with trio.move_on_after(TIMEOUT):
                await stream.send_all(json.dumps(reply).encode() + b"\n")
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:
        log.exception("control socket: a request failed")


# ---- the command's side (blocking) ---------------------------------------------------
def socket_for(mountpoint: Path | None, cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir / SOCKET_NAME
    assert mountpoint is not None
    entry = registry_entry(mountpoint)
    if not os.path.lexists(entry):
        raise ConfigError(f"{mountpoint}: no running imagefs mount is registered there "
                          "(give its --cache-dir)")
    return entry


def request(path: Path, op: str, **fields: Any) -> dict:
    """Send one request; the answer, or ``ConfigError`` when no daemon answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(path))
            sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise ConfigError(f"no imagefs daemon answers on {path}: "
                          f"{exc.strerror or exc}") from None
    reply = json.loads(data or b"{}")
    if "error" in reply:
        raise ImagefsError(reply["error"])
    return reply
