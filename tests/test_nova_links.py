"""Nova's base links (``imagefs.nova``): made, kept and removed, and nothing else touched.

``BaseLinks.sync`` against a temporary directory that holds what a real
``_base`` holds besides our links; then ``imagefs mount --nova-base-dir``
against the real Glance: links appear for images, follow new and deleted
images, come back after Nova's image cache manager removes one, and stay at
unmount.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import ALICE, make_image
from test_mount import Mount, imagefs

from imagefs.api import API
from imagefs.drivers.glance import GlanceDriver
from imagefs.errors import ConfigError
from imagefs.nova import BaseLinks, base_name, check_base_dir, keep_links

A = "11111111-2222-4333-8444-555555555555"
B = "66666666-7777-4888-9999-aaaaaaaaaaaa"
C = "bbbbbbbb-cccc-4ddd-8eee-ffffffffffff"


def _others(base: Path, mnt: Path) -> dict[str, str]:
    """What Nova and others keep in _base: name -> what it is (file content or link)."""
    (base / base_name(C)).write_text("nova's own download of C")
    (base / f"{base_name(A)}_10737418240").write_text("a legacy resized copy")
    (base / "swap_512").write_text("swap")
    (base / "ephemeral_10_40d1d2c").write_text("ephemeral")
    (base / "nova-ephemeral_10_40d1d2c").write_text("")  # a lock file
    os.symlink("/elsewhere/data", base / base_name(B))  # a link made by hand
    os.symlink(f"/other-mount/{A}/data", base / ("a" * 40))
    os.symlink(f"{mnt}/{A}/data", base / base_name(C)[::-1])  # our target, not our name
    return {name: (os.readlink(base / name) if (base / name).is_symlink()
                   else (base / name).read_text()) for name in os.listdir(base)}


def _snapshot(base: Path, names) -> dict[str, str]:
    return {n: (os.readlink(base / n) if (base / n).is_symlink() else (base / n).read_text())
            for n in names}


def test_sync_makes_and_removes_only_its_own_links(tmp_path):
    base, mnt = tmp_path / "_base", tmp_path / "mnt"
    base.mkdir()
    others = _others(base, mnt)
    links = BaseLinks(base, mnt)
    done = links.sync([A, B, C, "not-a-uuid"])
    assert done.made == [A]  # B's and C's names are taken: not ours, left alone
    assert os.readlink(base / base_name(A)) == f"{mnt}/{A}/data"
    assert links.owner(base_name(A)) == A
    assert all(links.owner(n) is None for n in others)
    assert links.sync([A, B, C]).made == []  # in step: nothing to do
    assert links.sync([B]).removed == [A]  # A is gone from the listing
    assert not os.path.lexists(base / base_name(A))
    assert links.sync([]).removed == []  # none of the others is ours
    assert _snapshot(base, others) == others and set(os.listdir(base)) == set(others)


def test_a_link_nova_removed_is_made_again_and_one_nova_replaced_is_left(tmp_path):
    base, mnt = tmp_path / "_base", tmp_path / "mnt"
    base.mkdir()
    links = BaseLinks(base, mnt)
    links.sync([A, B])
    os.remove(base / base_name(A))  # the image cache manager: an unused, old base file
    assert links.sync([A, B]).made == [A]
    # Nova downloaded B itself (the link was dangling) and renamed its file over the link.
    (base / "part").write_text("nova's download")
    os.replace(base / "part", base / base_name(B))
    assert links.sync([A]).removed == []
    assert (base / base_name(B)).read_text() == "nova's download"


def test_a_failing_listing_removes_nothing_and_is_said_once(tmp_path, caplog):
    base, mnt = tmp_path / "_base", tmp_path / "mnt"
    base.mkdir()
    links = BaseLinks(base, mnt)
    links.sync([A])
    calls = []

    async def listing():
        calls.append(1)
        raise OSError("image service down")

    async def main():
        with trio.move_on_after(5):
            await keep_links(links, listing, interval=1)
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(calls) >= 5
    assert os.readlink(base / base_name(A)) == f"{mnt}/{A}/data"
    assert caplog.text.count("cannot keep Nova's base links") == 1


def test_a_missing_base_dir_is_refused_in_one_line(glance_clean, tmp_path):
    (tmp_path / "mnt").mkdir()
    out = imagefs("mount", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "cache"),
                  "--nova-base-dir", str(tmp_path / "nope"),
                  env={"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url})
    assert out.returncode == 2
    assert "--nova-base-dir" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_base_dir_checks(tmp_path, caplog):
    assert check_base_dir(str(tmp_path), allow_other=True) == tmp_path
    assert "allow-other" not in caplog.text
    check_base_dir(str(tmp_path), allow_other=False)
    assert "--nova-base-dir without --allow-other" in caplog.text
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="no such directory"):
        check_base_dir(str(tmp_path / "file"), allow_other=True)


def _wait(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.mount
@pytest.mark.glance
def test_links_on_a_real_mount_follow_the_images(glance_clean, tmp_path):
    api = API(GlanceDriver(glance_clean.url))
    first = os.urandom(200_000)
    one = make_image(api, ALICE, "nova-links", data=first)["id"]
    base = tmp_path / "_base"
    base.mkdir()
    (base / "swap_512").write_text("swap")
    m = Mount(tmp_path / "mnt", tmp_path / "cache",
              {"OS_AUTH_TOKEN": "alice-token", "OS_IMAGE_URL": glance_clean.url},
              "--nova-base-dir", str(base))
    try:
        link = base / base_name(one)
        _wait(lambda: link.is_symlink())
        assert os.readlink(link) == str(m.path / one / "data")
        assert link.read_bytes() == first
        # Every image the mount lists has its link (the shared Glance holds others too).
        _wait(lambda: {base_name(i) for i in os.listdir(m.path) if i != "by-name"}
              <= set(os.listdir(base)))
        two = make_image(api, ALICE, "nova-links", data=b"two")["id"]
        _wait(lambda: (base / base_name(two)).is_symlink())  # within --list-ttl and a sync
        os.remove(link)  # Nova's image cache manager removes an unused base file
        _wait(lambda: link.is_symlink())  # made again
        api.delete(ALICE, two)
        _wait(lambda: not os.path.lexists(base / base_name(two)))
    finally:
        assert m.unmount() == 0, m.output()
    assert "Traceback" not in m.output()
    assert link.is_symlink() and not link.exists()  # kept, dangling, at unmount
    assert (base / "swap_512").read_text() == "swap"
