"""imagefs.notify: systemd's readiness datagrams, sent without systemd."""

import socket

from imagefs.notify import notify


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_fields_go_in_one_datagram(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1", "STATUS=serving images at /m") is True
        assert server.recv(4096) == b"READY=1\nSTATUS=serving images at /m"


def test_an_abstract_socket_is_reached(monkeypatch):
    name = f"imagefs-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        assert server.recv(4096) == b"STOPPING=1"


def test_a_socket_that_cannot_be_reached_costs_a_debug_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level("DEBUG", logger="imagefs.notify"):
        assert notify("READY=1") is False
    assert [r.levelname for r in caplog.records] == ["DEBUG"]
    assert "cannot notify" in caplog.text
