"""imagefs.cachelock: one mount, or one cache command, per cache directory."""

import os
import subprocess
import sys

import pytest

from imagefs.cachelock import holder, lock_cache_dir, try_lock, write_pid
from imagefs.errors import ConfigError

HOLD = """
import sys, time
from pathlib import Path
from imagefs.cachelock import lock_cache_dir, write_pid
lock_cache_dir(Path(sys.argv[1])); write_pid(Path(sys.argv[1]))
print("held", flush=True); time.sleep(60)
"""


@pytest.fixture
def held(tmp_path):
    """A cache directory whose lock another process holds, as a mount does."""
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(cache)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline() == "held\n"
    yield cache, proc.pid
    proc.kill()
    proc.wait()


def test_a_second_mount_is_refused_with_the_first_ones_pid(held):
    cache, pid = held
    assert holder(cache) == str(pid)
    with pytest.raises(ConfigError, match=f"in use by another imagefs mount \\(pid {pid}\\)"):
        lock_cache_dir(cache)


def test_a_cache_command_does_not_take_a_lock_a_mount_holds(held):
    cache, _ = held
    assert try_lock(cache) is None


def test_a_free_cache_is_locked_and_names_its_holder(tmp_path):
    cache = tmp_path / "cache"
    fd = lock_cache_dir(cache)
    try:
        write_pid(cache)
        assert holder(cache) == str(os.getpid())
        assert (cache / "CACHEDIR.TAG").exists()  # claimed as a cache first
    finally:
        os.close(fd)
    fd = try_lock(cache)
    try:
        assert fd is not None and holder(cache) == str(os.getpid())
    finally:
        os.close(fd)


def test_a_lock_file_that_cannot_be_made_is_a_one_line_reason(tmp_path):
    cache = tmp_path / "cache"
    lock_cache_dir(cache)  # claimed, tagged
    (cache / "lock").unlink()
    (cache / "lock").mkdir()
    with pytest.raises(ConfigError, match="cannot create .*lock.*choose another --cache-dir"):
        lock_cache_dir(cache)


def test_holder_of_a_directory_without_a_lock_file_is_unknown(tmp_path):
    assert holder(tmp_path) == "?"
