"""A mount's control socket answered by a function, in a thread: for the commands'
tests, which need what a daemon says, not a mount."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path


@contextlib.contextmanager
def fake_daemon(cache_dir: Path, answer):
    """Serve ``<cache_dir>/control.sock``: each request (a dict) gets ``answer(request)``.
    Yields the requests seen."""
    seen: list[dict] = []
    cache_dir.mkdir(parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(cache_dir / "control.sock"))
    server.listen(4)

    def loop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                request = json.loads(data)
                seen.append(request)
                conn.sendall(json.dumps(answer(request)).encode() + b"\n")
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)
