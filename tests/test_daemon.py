"""imagefs.daemon: the fork, the readiness word on the pipe, the log redirection."""

import os
import stat

import pytest

from imagefs.daemon import daemonize
from imagefs.errors import ConfigError


def _in_child(tmp_path, then):
    """A ``run`` that records what the child is (pid, session, umask, fds) and then
    does ``then(ready)``."""
    def run(ready):
        umask = os.umask(0)
        os.umask(umask)
        (tmp_path / "child").write_text(
            f"{os.getpid()} {os.getsid(0)} {umask:o} {os.readlink('/proc/self/fd/0')} "
            f"{os.readlink('/proc/self/fd/1')} {os.readlink('/proc/self/fd/2')}")
        return then(ready)
    return run


def _reap(tmp_path) -> int:
    """The child's exit code."""
    pid = int((tmp_path / "child").read_text().split()[0])
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_ready_returns_0_at_once_and_the_child_is_detached_and_logs_to_the_file(
        tmp_path, capsys):
    log_file = tmp_path / "daemon.log"

    def then(ready):
        ready()
        ready("a later word is dropped")
        import logging
        logging.getLogger("imagefs.test").info("served")
        print("a stray print")
        os.write(2, b"a stray write to stderr\n")
        return 7
    assert daemonize(_in_child(tmp_path, then), log_file) == 0
    assert _reap(tmp_path) == 7
    pid, sid, umask, stdin, stdout, stderr = (tmp_path / "child").read_text().split()
    assert sid == pid and umask == "77"
    assert stdin == stdout == os.devnull and stderr == str(log_file)
    text = log_file.read_text()
    assert f" {pid} imagefs.test INFO: served" in text
    assert "a stray write to stderr" in text and "a stray print" not in text
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("then, word", [
    (lambda ready: (_ for _ in ()).throw(ConfigError("cannot mount at /x: busy")),
     "cannot mount at /x: busy"),
    (lambda ready: (_ for _ in ()).throw(ValueError("bad")), "ValueError: bad"),
    (lambda ready: 0, "the daemon stopped before the mount was ready"),
])
def test_a_child_that_ends_before_ready_fails_the_parent_with_its_reason(
        tmp_path, capsys, then, word):
    log_file = tmp_path / "daemon.log"
    assert daemonize(_in_child(tmp_path, then), log_file) == 1
    assert capsys.readouterr().err == f"imagefs: mount failed: {word}\n"
    code = _reap(tmp_path)
    assert code == (0 if word.startswith("the daemon stopped") else 1)
    if "bad" in word:
        assert "the mount failed" in log_file.read_text()
        assert "Traceback" in log_file.read_text()


def test_a_child_that_dies_without_a_word_points_at_the_log(tmp_path, capsys):
    log_file = tmp_path / "daemon.log"
    assert daemonize(_in_child(tmp_path, lambda ready: os._exit(3)), log_file) == 1
    assert capsys.readouterr().err == f"imagefs: mount failed: the daemon exited; see {log_file}\n"
    assert _reap(tmp_path) == 3
