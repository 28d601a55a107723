"""imagefs.config: sizes, modes and free space as the options spell them, the
settings' checks, and ``imagefs mount``'s defaults written once (in MountConfig)."""

import argparse
import dataclasses

import pytest

from imagefs.config import (GiB, KiB, MiB, FreeSpace, MountConfig, config_from_args,
                            format_mode, format_size, parse_mode, parse_size, parse_user)
from imagefs.errors import ConfigError
from imagefs.retry import RetryPolicy


@pytest.mark.parametrize("text, size", [("4M", 4 * MiB), ("512 KiB", 512 * KiB),
                                        ("10G", 10 * GiB), ("1.5k", 1536), ("0", 0),
                                        ("2T", 2 << 40), ("100", 100)])
def test_sizes_are_binary(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "4X", "M", "-1M", "4 M B"])
def test_a_bad_size_says_how_to_write_one(text):
    with pytest.raises(ConfigError, match="not a size.*use e.g. 4M"):
        parse_size(text)


@pytest.mark.parametrize("size", [0, 1, 1000, 256 * KiB, 64 * MiB, 20 * GiB, 3 << 40,
                                  1536 * KiB])
def test_format_size_reads_back_as_the_same_size(size):
    assert parse_size(format_size(size)) == size


def test_format_size_takes_the_largest_unit_that_divides():
    assert [format_size(n) for n in (20 * GiB, 256 * KiB, 1536 * KiB, 1000, 0)] == \
        ["20G", "256K", "1536K", "1000", "0"]


def test_modes_are_octal_and_read_back():
    assert parse_mode("0440") == parse_mode("440") == 0o440
    assert format_mode(0o444) == "0444" and format_mode(0o55) == "0055"
    with pytest.raises(ConfigError, match="not a file mode"):
        parse_mode("0999")


def test_users_by_name_or_number():
    assert parse_user("root") == 0 and parse_user("1234") == 1234
    with pytest.raises(ConfigError, match="no such user"):
        parse_user("no-such-user-here")


def test_free_space_is_shown_as_it_is_written():
    assert str(FreeSpace(percent=5.0)) == "5%"
    assert str(FreeSpace(bytes=512 * MiB)) == "512.0 MiB"


@pytest.mark.parametrize("kwargs, says", [
    (dict(block_size=3 * 64 * KiB), "power of two"),
    (dict(block_size=32 * KiB), "power of two"),
    (dict(memory_cache=256 * KiB), "at least two blocks"),
    (dict(cache_size=-1), "cache size must be >= 0"),
    (dict(fetch_threads=0), "fetch threads"),
    (dict(file_mode=0o644), "read-only"),
    (dict(dir_mode=0o1000), "--dir-mode must be permission bits"),
    (dict(profile_window=-1), "--profile-window"),
    (dict(max_readahead=-1), "--readahead"),
    (dict(read_deadline=0), "read deadline"),
    (dict(list_ttl=-1), "TTLs"),
])
def test_settings_that_cannot_work_are_refused(kwargs, says):
    with pytest.raises(ConfigError, match=says):
        MountConfig(**kwargs)


def _args(**given) -> argparse.Namespace:
    """An ``imagefs mount`` command line's options, none given but ``given``."""
    names = ("cache_dir", "cache_size", "cache_min_free", "memory_cache", "block_size",
             "fetch_threads", "readahead", "kernel_readahead", "list_ttl", "record_ttl",
             "read_deadline", "uid", "gid", "file_mode", "dir_mode", "profile_dir",
             "profile_window")
    return argparse.Namespace(**{**{n: None for n in names}, "allow_other": False, **given})


def test_options_not_given_leave_mountconfigs_defaults():
    """(The mount's retries end at its read deadline.)"""
    assert config_from_args(_args()) == dataclasses.replace(
        MountConfig(), retry=RetryPolicy(deadline=MountConfig.read_deadline))


def test_options_given_are_read_as_their_fields():
    config = config_from_args(_args(cache_size="1G", readahead="0", kernel_readahead="1M",
                                    read_deadline=5.0, file_mode="440", uid="", gid="0",
                                    cache_dir="rel", allow_other=True))
    assert config.cache_size == GiB and config.max_readahead == 0
    assert config.read_ahead_kb == 1024 and config.file_mode == 0o440
    assert config.read_deadline == 5.0 and config.retry.deadline == 5.0
    assert config.uid is None and config.gid == 0 and config.allow_other
    assert config.cache_dir.is_absolute() and config.cache_dir.name == "rel"


def test_help_defaults_follow_mountconfig(capsys):
    from imagefs.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["mount", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    d = MountConfig()
    for said in (f"(default {format_size(d.cache_size)}; 0 disables it)",
                 f"(default {d.cache_min_free})",
                 f"memory cache bound (default {format_size(d.memory_cache)})",
                 f"cache block size (default {format_size(d.block_size)})",
                 f"(default {format_size(d.max_readahead)}; 0 turns it off)",
                 f"(default {d.read_ahead_kb}K;",
                 f"(default {d.fetch_threads})", f"(default {d.read_deadline:g})",
                 f"(default {d.profile_window:g}; 0 records nothing)",
                 f"(default {format_mode(d.file_mode)})",
                 f"(default {format_mode(d.dir_mode)})"):
        assert said in text, said
