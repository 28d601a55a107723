"""Boot the test guest under qemu-system-x86_64 and count what qemu reads.

The guest is the disk ``scripts/build-guest`` makes: once booted it prints
``MARKER`` on its serial console and powers off.  ``boot(disk, workdir)``
starts qemu on it (``-accel`` as given, ``-m 512``, a virtio disk, the serial console into a
file, ``-no-reboot`` so that a panic ends qemu too), waits for the marker
and then for the power-off, and returns a ``Boot``; it raises ``BootFailed``
with the console's last lines if qemu exits first or the marker has not
come within ``timeout``.  qemu is killed on every way out.

Reads are counted by qemu's block layer: with ``-trace`` the
``bdrv_open_common`` event names each node as it is opened (its address,
file name and driver) and ``bdrv_co_preadv_part`` gives each read a node
was asked for.  ``Boot.read_bytes(path)`` sums the reads of the ``file``
node of ``path``: the bytes qemu asked the host for, with ``pread``, from
that file (for a backing file ``MOUNT/ID/data``, what the mount was asked
for before the host kernel's page cache and readahead).  ``query-blockstats``
does not serve here: in qemu 7.2 it accounts only devices, and gives a
backing file's node zeros.

``accelerator()`` is ``kvm`` when ``/dev/kvm`` is there and a probe boot of
the guest prints the marker under KVM, ``tcg`` otherwise (where KVM stops
the guest with "emulation failure", the probe gives up at once).  The
probe's answer is kept for the process; ``IMAGEFS_GUEST_ACCEL`` overrides it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

#: The line the guest prints on its console once booted (scripts/build-guest).
MARKER = "IMAGEFS-GUEST-BOOTED"
#: Seconds a boot may take: one under TCG takes about 25 s on two cores.
BOOT_TIMEOUT = 300.0
QEMU = "qemu-system-x86_64"
_POWER_OFF_TIMEOUT = 60.0
_PROBE_TIMEOUT = 60.0
_KVM_BROKEN = "emulation failure"

_OPEN = re.compile(r'bdrv_open_common bs (0x[0-9a-f]+) filename "(.*)" flags \S+ '
                   r'format_name "([^"]*)"')
_READ = re.compile(r"bdrv_co_preadv_part bs (0x[0-9a-f]+) offset \d+ bytes (\d+)")


class BootFailed(AssertionError):
    """The guest did not print the marker: qemu exited, or time ran out."""


@dataclass
class Boot:
    """One boot that printed the marker."""

    seconds: float  # from qemu's start to the marker
    accel: str
    console: str  # what the guest wrote on its serial console
    reads: dict[tuple[str, str], int] = field(default_factory=dict)  # (file, driver) -> bytes

    def read_bytes(self, path: Path | str, driver: str = "file") -> int:
        """Bytes the ``driver`` node of ``path`` was asked to read (0 if none was opened)."""
        return self.reads.get((str(path), driver), 0)


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None and shutil.which("qemu-img") is not None


def overlay(backing: Path, fmt: str, path: Path) -> Path:
    """A new qcow2 at ``path`` whose backing file is ``backing`` (format ``fmt``)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", fmt,
                    str(path)], check=True, capture_output=True, timeout=120)
    return path


def boot(disk: Path, workdir: Path, *, accel: str, fmt: str = "qcow2",
         timeout: float = BOOT_TIMEOUT, on_marker=None, cache: str | None = None) -> Boot:
    """Boot ``disk`` (format ``fmt``; give it an overlay: the guest writes) under ``accel``.
    ``cache``: the drive's cache mode (``none``: O_DIRECT, as Nova's libvirt driver
    chooses; its backing files inherit it); qemu's default when None.

    qemu's console, trace and messages go to files in ``workdir``; ``on_marker()``
    is called when the marker appears (before the guest has powered off).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    console, trace, stderr = (workdir / n for n in ("console.txt", "trace.txt", "qemu.txt"))
    for f in (console, trace):
        f.unlink(missing_ok=True)
    cmd = [QEMU, "-accel", accel, "-m", "512", "-nodefaults", "-display", "none",
           "-no-reboot", "-serial", f"file:{console}",
           "-drive", f"file={disk},format={fmt},if=virtio" + (f",cache={cache}" if cache else ""),
           "-trace", "enable=bdrv_open_common", "-trace", "enable=bdrv_co_preadv_part",
           "-D", str(trace)]
    with open(stderr, "w+") as err:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            seconds = _wait_for_marker(proc, console, err, start, timeout)
            if on_marker is not None:
                on_marker()
            try:
                proc.wait(_POWER_OFF_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise BootFailed(f"booted in {seconds:.1f} s but did not power off within "
                                 f"{_POWER_OFF_TIMEOUT:.0f} s\n{_tail(console)}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Boot(seconds, accel, _read(console), _count_reads(trace))


def _wait_for_marker(proc, console: Path, err, start: float, timeout: float) -> float:
    while True:
        elapsed = time.monotonic() - start
        if MARKER in _read(console):
            return elapsed
        err.seek(0)
        failure = err.read()
        if proc.poll() is not None or _KVM_BROKEN in failure:
            raise BootFailed(f"qemu exited (status {proc.poll()}) after {elapsed:.1f} s "
                             f"without {MARKER}\nqemu: {failure[-2000:]}\n{_tail(console)}")
        if elapsed > timeout:
            raise BootFailed(f"no {MARKER} within {timeout:.0f} s\n{_tail(console)}")
        time.sleep(0.2)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(console: Path, lines: int = 30) -> str:
    return "console, last lines:\n" + "\n".join(_read(console).splitlines()[-lines:])


def _count_reads(trace: Path) -> dict[tuple[str, str], int]:
    """(file name, driver) -> bytes read, from a trace of the two events."""
    nodes: dict[str, tuple[str, str]] = {}
    reads: dict[tuple[str, str], int] = defaultdict(int)
    for line in _read(trace).splitlines():
        if m := _READ.search(line):
            if m[1] in nodes:
                reads[nodes[m[1]]] += int(m[2])
        elif m := _OPEN.search(line):
            nodes[m[1]] = (m[2], m[3])
    return dict(reads)


_probed: str | None = None


def accelerator(disk: Path, fmt: str = "qcow2") -> str:
    """``kvm`` if a probe boot of ``disk`` under KVM prints the marker, else ``tcg``.

    The probe boots an overlay of ``disk`` of its own; give it a local disk
    (not one on a mount whose reads are being counted).  The first answer
    is kept for the process.
    """
    global _probed
    if forced := os.environ.get("IMAGEFS_GUEST_ACCEL"):
        return forced
    if _probed is None:
        _probed = "tcg"
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            with tempfile.TemporaryDirectory(prefix="imagefs-kvm-probe.") as work:
                top = overlay(disk, fmt, Path(work) / "probe.qcow2")
                try:
                    boot(top, Path(work), accel="kvm", timeout=_PROBE_TIMEOUT)
                    _probed = "kvm"
                except BootFailed:
                    pass
    return _probed
