"""``imagefs profile record``: boot an image once, so that even its first boot on
each host is a profiled one.

``imagefs profile record MOUNTPOINT ID|NAME [--window S] [--publish]`` asks the
mount's daemon (control socket, ``imagefs.control``; its side is
``imagefs.profilectl``) to record the image's
reads from now on (``profile-record``), boots the image in a throw-away qemu
from a qcow2 overlay on ``MOUNTPOINT/ID/data`` (no network, no display, the
serial console into a file), waits until the guest powers off or the window
ends, kills qemu, and asks the daemon to save the recording now
(``profile-save``): into the mount's profile directory and, with
``--publish``, through the image service (``imagefs.profiles_published``).
The recording is the mount's, made exactly as a boot's on that mount: qemu
reads the image through the mount like any guest.

qemu follows what the image's properties say it needs: ``hw_disk_bus``
(``virtio``, the default; ``scsi`` (virtio-scsi), ``ide``, ``sata``) and
``hw_firmware_type`` (``bios``, the default; ``uefi`` with OVMF from
``OVMF_CANDIDATES``), with ``min_ram`` MiB of memory (512 at least).  The
accelerator is KVM when ``/dev/kvm`` is usable, unless qemu stops the guest
with an emulation failure (nested KVM often does) or fails at once: then the
boot, and the recording, start again under TCG.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import control
from ..errors import ConfigError, ImagefsError
from ..progress import human
from .options import mount_socket
from .prefetch import image_id as to_image_id

QEMU = "qemu-system-x86_64"
BUSES = ("virtio", "scsi", "ide", "sata")
OVMF_CANDIDATES = ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/ovmf/OVMF.fd",
                   "/usr/share/qemu/OVMF.fd")
#: A KVM qemu that fails this soon is taken for a KVM that does not work here.
KVM_TRIAL = 5.0
_KVM_BROKEN = "emulation failure"


def add_arguments(sub) -> None:
    r = sub.add_parser("record", help="boot an image once in a throw-away qemu and record "
                                      "its boot profile on the mount")
    r.add_argument("mountpoint", metavar="MOUNTPOINT")
    r.add_argument("image", metavar="ID|NAME")
    r.add_argument("--window", type=float, default=120.0, metavar="S",
                   help="seconds to record at most (default 120; the recording ends "
                        "earlier when the guest powers off)")
    r.add_argument("--publish", action="store_true",
                   help="publish the profile through the image service too (needs a mount "
                        "that publishes)")
    r.add_argument("--cache-dir", metavar="DIR",
                   help="the mount's cache directory (if its socket is not registered)")
    r.set_defaults(run=run_record)


def qemu_command(disk: Path, record: dict, accel: str, console: Path) -> list[str]:
    """The qemu command line booting ``disk`` (a qcow2) as ``record``'s properties say."""
    props = record.get("properties") or {}
    bus = props.get("hw_disk_bus") or "virtio"
    if bus not in BUSES:
        raise ConfigError(f"image {record['id']}: hw_disk_bus {bus!r} is not one of "
                          f"{', '.join(BUSES)}")
    memory = max(512, int(record.get("min_ram") or 0))
    cmd = [QEMU, "-accel", accel, "-m", str(memory), "-nodefaults", "-display", "none",
           "-no-reboot", "-nic", "none", "-serial", f"file:{console}"]
    firmware = props.get("hw_firmware_type") or "bios"
    if firmware == "uefi":
        ovmf = next((p for p in OVMF_CANDIDATES if os.path.exists(p)), None)
        if ovmf is None:
            raise ConfigError(f"image {record['id']} wants UEFI (hw_firmware_type=uefi) and "
                              f"no OVMF is installed ({', '.join(OVMF_CANDIDATES)})")
        cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={ovmf}"]
    elif firmware != "bios":
        raise ConfigError(f"image {record['id']}: hw_firmware_type {firmware!r} is not bios "
                          "or uefi")
    drive = f"file={disk},format=qcow2"
    if bus in ("virtio", "ide"):
        cmd += ["-drive", f"{drive},if={bus}"]
    elif bus == "scsi":
        cmd += ["-device", "virtio-scsi-pci,id=scsi0", "-drive", f"{drive},if=none,id=disk0",
                "-device", "scsi-hd,drive=disk0,bus=scsi0.0"]
    else:
        cmd += ["-device", "ahci,id=ahci0", "-drive", f"{drive},if=none,id=disk0",
                "-device", "ide-hd,drive=disk0,bus=ahci0.0"]
    return cmd


def _kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _boot(cmd: list[str], log: Path, window: float, accel: str, progress) -> tuple[str, float]:
    """Run qemu until it exits or ``window`` ends; ("off" | "window" | "kvm-broken", s)."""
    with open(log, "w+") as err:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            while True:
                elapsed = time.monotonic() - start
                code = proc.poll()
                if accel == "kvm":
                    err.seek(0)
                    if _KVM_BROKEN in err.read() or \
                            (code not in (None, 0) and elapsed < KVM_TRIAL):
                        return "kvm-broken", elapsed
                if code is not None:
                    if code != 0:
                        err.seek(0)
                        raise ImagefsError(f"qemu exited with status {code}: "
                                           f"{err.read().strip()[-500:]}")
                    return "off", elapsed
                if elapsed >= window:
                    return "window", elapsed
                progress(elapsed)
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _metadata(mountpoint: Path, image_id: str) -> dict:
    try:
        return json.loads((mountpoint / image_id / "metadata.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {mountpoint / image_id / 'metadata.json'}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None


def run_record(args) -> int:
    if shutil.which(QEMU) is None or shutil.which("qemu-img") is None:
        raise ConfigError(f"profile record needs {QEMU} and qemu-img")
    if args.window <= 0:
        raise ConfigError("--window must be > 0 seconds")
    mountpoint = Path(args.mountpoint).absolute()
    sock = mount_socket(mountpoint, args.cache_dir)
    image = to_image_id(mountpoint, args.image)
    record = _metadata(mountpoint, image)
    fmt = record.get("disk_format") or "raw"
    tty = sys.stderr.isatty()

    def progress(elapsed: float) -> None:
        if tty:
            sys.stderr.write(f"\rrecording {image} under {accel}: {elapsed:.0f} s of "
                             f"{args.window:g} s\033[K")
            sys.stderr.flush()

    with tempfile.TemporaryDirectory(prefix="imagefs-record.") as work:
        top = Path(work) / "overlay.qcow2"
        made = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                               str(mountpoint / image / "data"), "-F", fmt, str(top)],
                              capture_output=True, text=True, timeout=120, check=False)
        if made.returncode != 0:
            raise ImagefsError(f"qemu-img create failed: {made.stderr.strip()}")
        accel = "kvm" if _kvm_usable() else "tcg"
        while True:
            cmd = qemu_command(top, record, accel, Path(work) / "console.txt")
            control.request(sock, "profile-record", image=image, window=args.window)
            how, seconds = _boot(cmd, Path(work) / "qemu.txt", args.window, accel, progress)
            if how != "kvm-broken":
                break
            accel = "tcg"  # KVM stopped the guest: start again, and record again
        if tty:
            sys.stderr.write("\n")
        saved = control.request(sock, "profile-save", image=image, publish=args.publish)
    ended = "the guest powered off" if how == "off" else "the window ended"
    print(f"{image}: booted under {accel} for {seconds:.1f} s ({ended}); profile: "
          f"{saved['ranges']} ranges, {human(saved['bytes'])}, {saved['covered_s']:.1f} s of "
          f"reads, {saved['boots']} boots; "
          + ("published" if saved["published"] else "saved on the mount only"
             + ("" if not args.publish else " (the mount does not publish)")))
    return 0
