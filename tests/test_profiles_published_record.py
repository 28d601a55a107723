"""``imagefs profile record``'s qemu command line: what the image's properties ask
(the boot itself is in test_profiles_published_boot.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefs.commands import profile_record
from imagefs.errors import ConfigError

DISK, CONSOLE = Path("/tmp/top.qcow2"), Path("/tmp/console.txt")


def command(accel="tcg", **props):
    return " ".join(profile_record.qemu_command(
        DISK, {"id": "i", "min_ram": props.pop("min_ram", 0), "properties": props}, accel,
        CONSOLE))


def test_a_plain_image_boots_from_a_virtio_disk_with_no_network():
    cmd = command()
    assert f"-drive file={DISK},format=qcow2,if=virtio" in cmd
    assert "-nic none" in cmd and "-nodefaults" in cmd and "-accel tcg" in cmd
    assert "-m 512" in cmd and "pflash" not in cmd


@pytest.mark.parametrize("bus, device", [("ide", "if=ide"), ("scsi", "scsi-hd,drive=disk0"),
                                         ("sata", "ide-hd,drive=disk0,bus=ahci0.0")])
def test_the_disk_bus_is_the_images(bus, device):
    assert device in command(hw_disk_bus=bus)


def test_uefi_and_memory_are_the_images(monkeypatch):
    monkeypatch.setattr(profile_record, "OVMF_CANDIDATES", (__file__,))
    cmd = command(hw_firmware_type="uefi", min_ram=2048)
    assert f"if=pflash,format=raw,readonly=on,file={__file__}" in cmd and "-m 2048" in cmd
    monkeypatch.setattr(profile_record, "OVMF_CANDIDATES", ("/nonexistent/OVMF.fd",))
    with pytest.raises(ConfigError, match="no OVMF"):
        command(hw_firmware_type="uefi")


def test_unknown_buses_and_firmware_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="hw_disk_bus 'usb'"):
        command(hw_disk_bus="usb")
    with pytest.raises(ConfigError, match="hw_firmware_type 'coreboot'"):
        command(hw_firmware_type="coreboot")


def test_the_daemon_side_records_past_the_window_and_refuses_what_is_not_an_id():
    """``profile-record`` records for the window and a margin (the save comes first);
    a request naming no image id is answered with an error, nothing recorded."""
    import types

    import trio

    from imagefs.profilectl import MARGIN, ProfileOps

    image_id = "11111111-1111-4111-8111-111111111111"
    ref = types.SimpleNamespace(id=image_id, version="v1", size=4096)
    recorded = []

    async def image_ref(wanted):
        assert wanted == image_id
        return ref

    fs = types.SimpleNamespace(image_ref=image_ref)
    profiles = types.SimpleNamespace(record=lambda image, window: recorded.append(
        (image, window)))
    ops = ProfileOps(fs, profiles)

    async def ask():
        bad = await ops.handle({"op": "profile-record", "image": "../etc", "window": 5})
        good = await ops.handle({"op": "profile-record", "image": image_id, "window": 5})
        return bad, good

    bad, good = trio.run(ask)
    assert bad == {"error": "not an image id: '../etc'"}
    assert good == {"image": image_id, "version": "v1", "size": 4096}
    assert recorded == [(ref, 5 + MARGIN)]
