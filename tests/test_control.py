"""imagefs.control: the daemon's socket and the command's requests, on a real socket."""

import os
import stat

import pytest
import trio

from imagefs import control
from imagefs.errors import ConfigError, ImagefsError


def serve_and_ask(tmp_path, handle, ask):
    """Serve ``handle`` on ``tmp_path/cache``'s control socket for a mount point at
    ``tmp_path/mnt``; ``ask(cache_dir, mountpoint)`` runs in a thread meanwhile.
    Returns what it returned, and what it raised."""
    cache, mnt = tmp_path / "cache", tmp_path / "mnt"
    cache.mkdir()
    outcome = {}

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve, cache, mnt, handle)
            try:
                outcome["value"] = await trio.to_thread.run_sync(ask, cache, mnt)
            except Exception as exc:
                outcome["error"] = exc
            nursery.cancel_scope.cancel()
    trio.run(main)
    return outcome


def test_a_request_is_answered_and_found_from_the_mount_point(tmp_path):
    async def handle(request):
        return {"echo": request}

    def ask(cache, mnt):
        path = control.socket_for(mnt, None)
        assert os.readlink(path) == str(cache / control.SOCKET_NAME)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        return control.request(path, "status", x=1)
    assert serve_and_ask(tmp_path, handle, ask) == {"value": {"echo": {"op": "status", "x": 1}}}
    # gone at the end: the socket and its registry entry
    assert not (tmp_path / "cache" / control.SOCKET_NAME).exists()
    assert not os.path.lexists(control.registry_entry(tmp_path / "mnt"))


def test_an_error_answer_is_raised_with_its_message(tmp_path):
    async def handle(request):
        if request["op"] == "bad":
            raise ImagefsError("no such job")
        return {"error": f"unknown request {request['op']!r}"}

    def ask(cache, mnt):
        path = cache / control.SOCKET_NAME
        errors = []
        for op in ("bad", "other"):
            with pytest.raises(ImagefsError) as exc:
                control.request(path, op)
            errors.append(str(exc.value))
        return errors
    assert serve_and_ask(tmp_path, handle, ask) == {
        "value": ["no such job", "unknown request 'other'"]}


def test_a_handler_that_fails_does_not_end_the_server(tmp_path):
    calls = []

    async def handle(request):
        calls.append(request["op"])
        if request["op"] == "crash":
            raise RuntimeError("a bug")
        return {"ok": True}

    def ask(cache, mnt):
        path = cache / control.SOCKET_NAME
        first = control.request(path, "crash")  # no answer: the connection closes
        return first, control.request(path, "fine")
    assert serve_and_ask(tmp_path, handle, ask) == {"value": ({}, {"ok": True})}
    assert calls == ["crash", "fine"]


def test_no_daemon_is_a_config_error_with_the_path(tmp_path):
    with pytest.raises(ConfigError, match=f"no imagefs daemon answers on {tmp_path}/x"):
        control.request(tmp_path / "x", "status")
    with pytest.raises(ConfigError, match="no running imagefs mount is registered there"):
        control.socket_for(tmp_path / "not-a-mount", None)
    assert control.socket_for(None, tmp_path) == tmp_path / control.SOCKET_NAME
