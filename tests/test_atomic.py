"""Whole-file writes: the old content or the new, never a part, and no debris."""

from __future__ import annotations

import os
import stat

import pytest

from imagefs.atomic import WholeFile, write_whole


def test_write_whole_replaces_with_the_mode_given(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    old = os.umask(0o077)
    try:
        write_whole(path, b"new", mode=0o644, sync=True)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # whatever the umask
    assert os.listdir(tmp_path) == ["f"]


def test_a_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with WholeFile(path) as f:
            f.write(b"half")
            assert len(os.listdir(tmp_path)) == 2
            raise RuntimeError("failed part-way")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


def test_nothing_replaces_without_commit(tmp_path):
    path = tmp_path / "f"
    with WholeFile(path) as f:
        f.write(b"never")
    assert os.listdir(tmp_path) == []


def test_the_temporary_file_is_0600_until_it_is_finished(tmp_path):
    path = tmp_path / "f"
    with WholeFile(path, mode=0o666) as f:
        assert stat.S_IMODE(os.stat(f.tmp).st_mode) == 0o600
        f.write(b"x")
        f.finish()
        assert stat.S_IMODE(os.stat(f.tmp).st_mode) == 0o666
        assert not path.exists()
        f.commit()
    assert path.read_bytes() == b"x"


def test_the_temporary_file_may_live_elsewhere_on_the_same_file_system(tmp_path):
    (tmp_path / "tmp").mkdir()
    path = tmp_path / "f"
    with WholeFile(path, directory=tmp_path / "tmp") as f:
        assert os.path.dirname(f.tmp) == str(tmp_path / "tmp")
        f.write(b"data")
        f.commit()
    assert path.read_bytes() == b"data" and os.listdir(tmp_path / "tmp") == []


def test_a_missing_directory_fails_at_once(tmp_path):
    with pytest.raises(FileNotFoundError):
        WholeFile(tmp_path / "no" / "f")
