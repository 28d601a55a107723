"""The holder: keeps a mount's ``/dev/fuse`` connection and (re)starts the daemon serving it.

A FUSE mount lives as long as its ``/dev/fuse`` file is open.  The holder
opens it and mounts (``mount(2)`` with ``fd=N`` as root, else ``fusermount3``
through ``_FUSE_COMMFD``, as libfuse does), reads the kernel's one
``FUSE_INIT``, and starts the serving daemon (``imagefs.takeover`` is its
side), handing it the descriptor and the ``INIT``.  When the daemon dies
(a crash, ``kill -9``, the OOM killer) the holder starts another at once,
which asks the kernel to resend what the dead one had read; the mount and
every open file go on.  ``SIGHUP`` hands the mount over to a new daemon (the
code now installed): the new one gets ready, the old one stops reading, the
new one starts reading, the old one answers what it had read and exits.
``SIGTERM``/``SIGINT`` stop the daemon and unmount.

The holder runs as ``python -I holder.py`` and imports nothing but the
standard library and ``fusedev.py`` beside it (the device: mount, ``INIT``,
resend, abort), so that nothing in the data path can take it down.  It is
started with a JSON spec in ``IMAGEFS_HOLDER`` (its one argument, the mount point, is
for ``ps``); the descriptors it names are
inherited: the cache directory's lock (held for the life of the mount, so that
two daemons may overlap during a hand-over) and the ready pipe of
``imagefs mount`` (given to the first daemon).

Crash loops: a daemon that dies before it serves counts as a failure to
start; the wait before the next start doubles from 0.25 s up to
``backoff_cap``; after ``max_failures`` failures in a row the connection is
aborted (``/sys/fs/fuse/connections/N/abort``) so that readers get errors
rather than wait for ever.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

try:
    from .fusedev import (RESEND_MINOR, connection_alive, connection_id, init_minor, mount,
                          read_init, resend_notification, unmount, write_abort)
except ImportError:  # run as a script (python -I holder.py): no package, only its file
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    from fusedev import (RESEND_MINOR, connection_alive, connection_id,  # type: ignore
                         init_minor, mount, read_init, resend_notification, unmount,
                         write_abort)

log = logging.getLogger("imagefs.holder")

SPEC_ENV = "IMAGEFS_HOLDER"
TAKEOVER_ENV = "IMAGEFS_TAKEOVER"
NO_TAKEOVER_ENV = "IMAGEFS_NO_TAKEOVER"  # for tests: a dead daemon is not replaced
RETIRE_TIMEOUT = 60.0        # an old daemon's in-flight requests have this long


# ---- the daemons ------------------------------------------------------------------------
class Daemon:
    """One serving daemon the holder started: its process and the pipes to it."""

    def __init__(self, proc: subprocess.Popen, init_w: int, status_r: int):
        self.proc, self.init_w, self.status_r = proc, init_w, status_r
        self.pidfd = os.pidfd_open(proc.pid)
        self.started = time.monotonic()
        self.retired_at = float("inf")
        self.prepared = self.serving = self.released = False
        self._buffer = b""

    def go(self, init: bytes) -> None:
        """Let the daemon read the connection: give it the ``FUSE_INIT``."""
        if self.init_w >= 0:
            try:
                os.write(self.init_w, init)
            except OSError:
                pass  # it died: its exit says so
            os.close(self.init_w)
            self.init_w = -1

    def words(self) -> list[str]:
        """What the daemon said on its status pipe since the last call."""
        try:
            chunk = os.read(self.status_r, 4096)
        except OSError:
            chunk = b""
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.decode(errors="replace") for line in lines]

    def close(self) -> None:
        for fd in (self.init_w, self.status_r, self.pidfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.init_w = self.status_r = self.pidfd = -1


class Holder:
    """One mount's holder: the connection, the serving daemon, the one taking over from
    it during a hand-over, and those that hand over and still answer what they read."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.mountpoint = spec["mountpoint"]
        self.max_failures = spec.get("max_failures", 5)
        self.backoff_cap = spec.get("backoff_cap", 5.0)
        self.ready_fd = spec.get("ready_fd")
        self.fd = -1
        self.init = b""
        self.current: Daemon | None = None
        self.incoming: Daemon | None = None   # a hand-over's new daemon, not yet serving
        self.retiring: list[Daemon] = []
        self.unreaped: list[subprocess.Popen] = []  # exited, but for a thread (reaped later)
        self.failures = 0
        self.takeovers = 0
        self.stopping = False
        self.aborted = False
        self.connection: int | None = None
        self.sel = selectors.DefaultSelector()

    # -- starting ------------------------------------------------------------------
    def spawn(self, resend: bool, takeover: int = 0) -> Daemon:
        """Start a daemon (the ``takeover``-th to serve the mount; 0: the first)."""
        init_r, init_w = os.pipe()
        status_r, status_w = os.pipe()
        os.set_blocking(status_r, False)
        info = {"init_fd": init_r, "fuse_fd": self.fd, "status_fd": status_w,
                "resend": resend, "minor": init_minor(self.init), "holder": os.getpid(),
                "takeovers": takeover, "mountpoint": self.mountpoint}
        fds = [init_r, status_w, self.fd]
        if self.ready_fd is not None:  # the first daemon says when the mount answers
            info["ready_fd"] = self.ready_fd
            fds.append(self.ready_fd)
        env = dict(os.environ, **{TAKEOVER_ENV: json.dumps(info)})
        env.pop(SPEC_ENV, None)
        try:
            proc = subprocess.Popen(self.spec["daemon"], env=env, pass_fds=fds,
                                    stdin=subprocess.DEVNULL)
        finally:
            os.close(init_r)
            os.close(status_w)
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None
        daemon = Daemon(proc, init_w, status_r)
        self.sel.register(daemon.pidfd, selectors.EVENT_READ, ("exit", daemon))
        self.sel.register(daemon.status_r, selectors.EVENT_READ, ("status", daemon))
        log.info("started daemon %d%s", proc.pid, " (resending what the last one had read)"
                 if resend else "")
        return daemon

    def forget(self, daemon: Daemon) -> None:
        for fd in (daemon.pidfd, daemon.status_r):
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        daemon.close()

    # -- events --------------------------------------------------------------------
    def on_status(self, daemon: Daemon) -> None:
        for word in daemon.words():
            if word == "prepared":
                daemon.prepared = True
                if daemon is self.incoming and self.current is not None:
                    log.info("handing over from daemon %d to %d", self.current.proc.pid,
                             daemon.proc.pid)
                    self.current.proc.send_signal(signal.SIGUSR1)  # stop reading, retire
                    self.current.retired_at = time.monotonic()
                elif daemon is self.incoming:
                    self.promote()
            elif word == "serving":
                daemon.serving = True
                if daemon is self.current:
                    self.failures = 0
            elif word == "released":
                daemon.released = True
                if daemon is self.current and self.incoming is not None:
                    self.retiring.append(daemon)
                    self.promote()

    def promote(self) -> None:
        """The hand-over's new daemon becomes the serving one."""
        self.current, self.incoming = self.incoming, None
        self.takeovers += 1
        self.current.go(self.init)

    def on_exit(self, daemon: Daemon) -> None:
        code = daemon.proc.poll()
        self.forget(daemon)
        if code is None:  # its main thread is gone; another waits in the kernel
            self.unreaped.append(daemon.proc)
            how, code = "exit, with a thread left waiting on the mount", -1
        else:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        if daemon in self.retiring:
            self.retiring.remove(daemon)
            log.info("daemon %d handed over and exited (%s)", daemon.proc.pid, how)
            if code != 0:  # it died with requests unanswered: the serving one gets them
                self.resend()
            return
        if daemon is self.incoming:
            self.incoming = None
            log.error("the new daemon %d exited (%s) before it served; daemon %d goes on "
                      "serving", daemon.proc.pid, how,
                      self.current.proc.pid if self.current else -1)
            if self.current is not None and self.current.released:  # too late to go back
                self.crashed(self.current, how)
            return
        if daemon is not self.current:
            return
        if self.incoming is not None and daemon.retired_at < float("inf"):
            log.info("daemon %d handed over and exited (%s)", daemon.proc.pid, how)
            self.promote()  # it exited without saying "released"
            if code != 0:
                self.resend()
            return
        self.current = None
        if self.stopping:
            return
        if not connection_alive(self.fd):
            log.info("%s was unmounted; daemon %d exited (%s)", self.mountpoint,
                     daemon.proc.pid, how)
            self.stopping = True
            return
        if code == 0:  # it was told to stop (SIGTERM): the mount goes with it
            log.info("daemon %d stopped: unmounting %s", daemon.proc.pid, self.mountpoint)
            self.stopping = True
            return
        self.crashed(daemon, how)

    def crashed(self, daemon: Daemon, how: str) -> None:
        if self.incoming is not None:  # a hand-over was under way: start afresh, resending
            self.forget(self.incoming)
            self.incoming.proc.kill()
            self.incoming.proc.wait()
            self.incoming = None
        if not daemon.serving and self.takeovers == 0:  # a mount that never served
            log.error("daemon %d failed to start (%s): unmounting %s", daemon.proc.pid, how,
                      self.mountpoint)
            self.stopping = True
            return
        if not daemon.serving:
            self.failures += 1
        if os.environ.get(NO_TAKEOVER_ENV):
            self.abort(f"the daemon died ({how}) and {NO_TAKEOVER_ENV} is set")
            return
        if self.failures >= self.max_failures:
            self.abort(f"the daemon failed to start {self.failures} times in a row "
                       f"(last: {how})")
            return
        delay = min(self.backoff_cap, 0.25 * 2 ** (self.failures - 1)) if self.failures else 0
        log.error("daemon %d died (%s)%s; starting another%s", daemon.proc.pid, how,
                  "" if daemon.serving else " before it served",
                  f" in {delay:.2f}s" if delay else "")
        if delay:
            time.sleep(delay)
        self.takeovers += 1
        self.current = self.spawn(resend=True, takeover=self.takeovers)
        self.current.go(self.init)

    def resend(self) -> None:
        """Ask the kernel to queue again the requests that were read and not answered
        (the serving daemon answers them; one it is answering is answered twice, the
        first answer then refused by the kernel and ignored)."""
        if init_minor(self.init) < RESEND_MINOR:
            return
        try:
            os.write(self.fd, resend_notification())
            log.info("the kernel resends what the dead daemon had read")
        except OSError as exc:
            log.error("the kernel refused FUSE_NOTIFY_RESEND: %s", exc.strerror)

    def abort(self, why: str) -> None:
        log.error("aborting the FUSE connection of %s: %s; its readers now get errors",
                  self.mountpoint, why)
        if not write_abort(self.connection):
            log.info("no /sys/fs/fuse/connections/%s/abort: the connection ends with this "
                     "process, which holds its last descriptor", self.connection)
        self.stopping = True
        self.aborted = True

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            if os.environ.get(NO_TAKEOVER_ENV):
                log.info("SIGHUP: no hand-over (%s is set)", NO_TAKEOVER_ENV)
                return
            if self.current is None or self.incoming is not None or self.stopping:
                log.info("SIGHUP: no hand-over now (one is under way, or no daemon serves)")
                return
            log.info("SIGHUP: starting a new daemon to hand the mount over to")
            self.incoming = self.spawn(resend=False, takeover=self.takeovers + 1)
            return
        if signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            log.info("%s: stopping the daemon and unmounting %s", signal.Signals(signum).name,
                     self.mountpoint)
            self.stopping = True
            _notify("STOPPING=1")
            for daemon in (self.current, self.incoming, *self.retiring):
                if daemon is not None:
                    daemon.proc.send_signal(signal.SIGTERM)

    # -- the loop --------------------------------------------------------------------
    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: None)
        self.sel.register(wake_r, selectors.EVENT_READ, ("signal", None))
        self.fd = mount(self.mountpoint, self.spec.get("fsname", "imagefs"),
                        self.spec.get("subtype", "imagefs"), self.spec.get("options", []))
        self.connection = connection_id(self.mountpoint)
        try:
            self.init = read_init(self.fd)
            log.info("mounted %s (FUSE 7.%d%s)", self.mountpoint, init_minor(self.init),
                     "" if init_minor(self.init) >= RESEND_MINOR else
                     ": this kernel cannot resend requests a dead daemon had read")
            self.current = self.spawn(resend=False)
            self.current.go(self.init)
            stop_deadline = None
            while True:
                if self.stopping:
                    alive = [d for d in (self.current, self.incoming, *self.retiring) if d]
                    if not alive:
                        break
                    if stop_deadline is None:
                        stop_deadline = time.monotonic() + RETIRE_TIMEOUT
                    elif time.monotonic() > stop_deadline:
                        for daemon in alive:
                            daemon.proc.kill()
                for key, _ in self.sel.select(timeout=1.0):
                    kind, daemon = key.data
                    if kind == "signal":
                        for b in wake_r.recv(64):
                            self.on_signal(b)
                    elif kind == "status":
                        self.on_status(daemon)
                    elif kind == "exit" and daemon.pidfd >= 0:
                        self.on_status(daemon)  # its last words first
                        self.on_exit(daemon)
                self._notice_half_dead()
                self._reap_stuck_retirees()
        finally:
            if connection_alive(self.fd) and not self.aborted:
                unmount(self.mountpoint)
            os.close(self.fd)
        log.info("unmounted %s", self.mountpoint)
        return 1 if self.aborted else 0

    def _notice_half_dead(self) -> None:
        """A daemon whose main thread exited while another of its threads waits for an
        answer from this mount (one it had read itself) never exits on its own, so its
        pidfd never says so: it is handled as dead (the next daemon's resend answers
        that thread, and it is reaped then)."""
        for daemon in (self.current, self.incoming, *self.retiring):
            if daemon is not None and daemon.pidfd >= 0 and _leader_exited(daemon.proc.pid):
                self.on_status(daemon)
                self.on_exit(daemon)
        self.unreaped = [p for p in self.unreaped if p.poll() is None]

    def _reap_stuck_retirees(self) -> None:
        """An old daemon that has not answered its requests in ``RETIRE_TIMEOUT`` is killed
        (what it had read stays unanswered: that is the kernel's to time out)."""
        now = time.monotonic()
        for daemon in self.retiring:
            if now - daemon.retired_at > RETIRE_TIMEOUT and daemon.proc.returncode is None:
                log.warning("daemon %d has not exited %.0fs after its hand-over: killing it",
                            daemon.proc.pid, RETIRE_TIMEOUT)
                daemon.proc.kill()
                daemon.retired_at = float("inf")


def _leader_exited(pid: int) -> bool:
    """Whether process ``pid``'s main thread has exited (a zombie, or gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _notify(message: str) -> None:
    """Tell systemd (``Type=notify``), if it is listening."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), path)
    except OSError:
        pass


def main() -> int:
    spec = json.loads(os.environ.pop(SPEC_ENV))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d holder %(levelname)s: %(message)s")
    try:
        return Holder(spec).run()
    except OSError as exc:
        log.error("%s", exc.strerror or exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
