"""The FUSE device for ``imagefs.holder``: mount, read the kernel's ``INIT``, resend, abort.

As libfuse does it: as root, ``mount(2)`` with ``fd=N`` on an open
``/dev/fuse``; as another user, ``fusermount3``, which sends the descriptor
back over the socket named by ``_FUSE_COMMFD``.  The standard library only,
like the holder (which loads this file by its path when it runs as a script).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import socket
import struct
import subprocess

FUSE_INIT = 26
FUSE_NOTIFY_RESEND = 7
RESEND_MINOR = 40  # the FUSE protocol minor version of the first kernel that resends
READ_SIZE = 4 << 20          # more than any request the kernel may queue
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4


def mount(mountpoint: str, fsname: str, subtype: str, options: list[str]) -> int:
    """Mount a FUSE filesystem at ``mountpoint``; the ``/dev/fuse`` descriptor."""
    if os.geteuid() != 0:
        return _fusermount(mountpoint, ["rw" if "ro" not in options else "ro",
                                        f"fsname={fsname}", f"subtype={subtype}",
                                        *[o for o in options if o != "ro"]])
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    st = os.stat(mountpoint)
    data = ",".join([f"fd={fd}", f"rootmode={st.st_mode & 0o170000:o}",
                     f"user_id={os.getuid()}", f"group_id={os.getgid()}",
                     *[o for o in options if o in ("allow_other", "default_permissions")]])
    flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if "ro" in options else 0)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(fsname.encode(), mountpoint.encode(), f"fuse.{subtype}".encode(),
                  ctypes.c_ulong(flags), data.encode()) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"mount at {mountpoint}: {os.strerror(err)}")
    return fd


def _fusermount(mountpoint: str, options: list[str]) -> int:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        proc = subprocess.run(["fusermount3", "-o", ",".join(options), "--", mountpoint],
                              env=env, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)
        theirs.close()
        if proc.returncode != 0:
            raise OSError(0, f"fusermount3: {proc.stderr.strip() or proc.returncode}")
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    if not fds:
        raise OSError(0, "fusermount3 sent no descriptor")
    os.set_inheritable(fds[0], False)
    return fds[0]


def read_init(fd: int) -> bytes:
    """The kernel's ``FUSE_INIT`` request, the first thing a new connection says."""
    data = os.read(fd, READ_SIZE)
    length, opcode = struct.unpack_from("<II", data)
    if opcode != FUSE_INIT or length != len(data):
        raise OSError(0, f"expected FUSE_INIT from the kernel, got opcode {opcode}")
    return data


def resend_notification() -> bytes:
    """``fuse_out_header`` of a ``FUSE_NOTIFY_RESEND``: no body, unique 0."""
    return struct.pack("<IiQ", 16, FUSE_NOTIFY_RESEND, 0)


def init_minor(init: bytes) -> int:
    """The kernel's FUSE protocol minor version, from its ``FUSE_INIT``."""
    return struct.unpack_from("<II", init, 40)[1]


def unmount(mountpoint: str) -> None:
    """Detach the mount (lazily, as libfuse does); whatever is still open ends with it."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.umount2(mountpoint.encode(), 2) == 0:  # MNT_DETACH
            return
    subprocess.run(["fusermount3", "-u", "-q", "-z", "--", mountpoint],
                   stdin=subprocess.DEVNULL, capture_output=True)


def connection_alive(fd: int) -> bool:
    """Whether the kernel still serves the connection (not unmounted, not aborted)."""
    poll = select.poll()
    poll.register(fd, 0)
    return not any(ev & (0x008 | 0x010) for _, ev in poll.poll(0))  # POLLERR, POLLHUP


def connection_id(mountpoint: str) -> int | None:
    """The mount's FUSE connection number (its device's minor), from the mount table:
    a ``stat`` of the mount point would wait for the daemon."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and fields[4] == mountpoint:
            found = int(fields[2].split(":")[1])
    return found


def write_abort(connection: int | None) -> bool:
    """Abort FUSE connection ``connection`` through fusectl (mounted here if it is not,
    and this process may); whether it could."""
    control = "/sys/fs/fuse/connections"
    if connection is None:
        return False
    if not os.path.ismount(control) and os.geteuid() == 0:
        subprocess.run(["mount", "-t", "fusectl", "fusectl", control], capture_output=True)
    try:
        with open(f"{control}/{connection}/abort", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False
