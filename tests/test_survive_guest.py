"""A real guest boots from an overlay on the mount while its serving daemon is
killed (SIGKILL) 6 s into the boot and again after the marker: the guest reaches
its marker, powers off, and its console shows no I/O error.  The boot's time is
printed beside that of a boot on a mount whose daemon is left alone."""

from __future__ import annotations

import os
import re
import signal
import threading

import guest
import pytest
from survive_util import daemon_of, log_of, mounted  # noqa: F401
from test_boot import accel, guest_disks, guest_images  # noqa: F401

pytestmark = [pytest.mark.boot, pytest.mark.mount, pytest.mark.glance]

if not guest.qemu_available():
    pytest.skip("needs qemu-system-x86_64 and qemu-img (scripts/setup installs them)",
                allow_module_level=True)

IO_ERROR = re.compile(r"I/O error|blk_update_request|EXT4-fs error|Buffer I/O", re.I)


def _boot(m, image_id, work, accel, kills: bool):
    data = m.image(image_id) / "data"
    work.mkdir()
    top = guest.overlay(data, "raw", work / "overlay.qcow2")
    killed = []

    def kill():
        pid = daemon_of(m)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    timer = threading.Timer(6.0, kill) if kills else None
    if timer:
        timer.start()
    try:
        boot = guest.boot(top, work / "guest", accel=accel,
                          on_marker=kill if kills else None)
    finally:
        if timer:
            timer.cancel()
    return boot, killed


def test_a_guest_boots_through_two_kills_of_the_daemon(mounted, guest_images, accel,  # noqa: F811
                                                       tmp_path):
    image_id = guest_images["raw"]
    m = mounted(name="killed")
    boot, killed = _boot(m, image_id, tmp_path / "work-killed", accel, kills=True)
    calm = mounted(name="calm")  # second: it may find the host warmer, not the first
    quiet, _ = _boot(calm, image_id, tmp_path / "work-calm", accel, kills=False)
    print(f"\nguest boot ({boot.accel}): marker after {boot.seconds:.1f} s with a kill -9 6 s "
          f"in, {quiet.seconds:.1f} s without")
    assert len(killed) == 2 and len(set(killed)) == 2
    assert guest.MARKER in boot.console
    assert not IO_ERROR.search(boot.console), boot.console[-3000:]
    assert os.path.ismount(m.path)
    assert "died (signal SIGKILL)" in log_of(m) and "Traceback" not in log_of(m)
