"""The mount's settings, in one frozen dataclass, with sizes parsed once."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from .errors import ConfigError
from .retry import RetryPolicy

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB,
          "g": GiB, "gb": GiB, "gib": GiB, "t": GiB << 10, "tb": GiB << 10, "tib": GiB << 10}


def parse_size(text: str) -> int:
    """``"4M"``, ``"512 KiB"``, ``"10G"`` → bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"not a size: {text!r} (use e.g. 4M, 512K, 10G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclasses.dataclass(frozen=True)
class FreeSpace:
    """Free space to leave on a filesystem: ``bytes``, or ``percent`` of its size."""
    bytes: int = 0
    percent: float = 0.0

    def of(self, total: int) -> int:
        """The minimum in bytes on a filesystem of ``total`` bytes."""
        return self.bytes or int(total * self.percent / 100)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent else f"{self.bytes / MiB:.1f} MiB"


def parse_free_space(text: str) -> FreeSpace:
    """``"5%"`` → 5 percent of the filesystem; ``"512M"`` → 512 MiB; ``"0"`` → none."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", str(text))
    if m:
        if float(m.group(1)) >= 100:
            raise ConfigError(f"not a free-space minimum: {text!r} (a percentage under 100)")
        return FreeSpace(percent=float(m.group(1)))
    try:
        return FreeSpace(bytes=parse_size(text))
    except ConfigError:
        raise ConfigError(f"not a free-space minimum: {text!r} (use e.g. 5%, 512M)") from None


def parse_mode(text: str) -> int:
    """``"0440"`` or ``"440"`` → permission bits (octal, as chmod takes them)."""
    if not re.fullmatch(r"0?[0-7]{3}", str(text).strip()):
        raise ConfigError(f"not a file mode: {text!r} (use octal, e.g. 0440)")
    return int(str(text).strip(), 8)


def parse_user(text: str) -> int:
    """A user name or uid → uid."""
    import pwd
    if str(text).isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise ConfigError(f"no such user: {text!r}") from None


def parse_group(text: str) -> int:
    """A group name or gid → gid."""
    import grp
    if str(text).isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ConfigError(f"no such group: {text!r}") from None


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/imagefs`` (``~/.cache/imagefs``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imagefs"


@dataclasses.dataclass(frozen=True)
class MountConfig:
    cache_dir: Path = dataclasses.field(default_factory=default_cache_dir)
    cache_size: int = 20 * GiB          # disk tier bound
    cache_min_free: FreeSpace = FreeSpace(percent=5.0)  # free space the disk tier leaves
    memory_cache: int = 256 * MiB       # memory tier bound
    block_size: int = 256 * KiB         # the cache's unit, and a random read's fetch
    list_ttl: float = 30.0              # seconds a listing of images is trusted
    record_ttl: float = 30.0            # seconds an image's record is trusted
    fetch_threads: int = 8              # ranged GETs (random reads) in flight at once
    max_readahead: int = 64 * MiB       # the prefetch window's ceiling (0: no prefetch)
    read_ahead_kb: int = 256            # the kernel's per-mount readahead (0: leave as is)
    allow_other: bool = False
    uid: int | None = None              # owner shown for every file (None: the mount's user)
    gid: int | None = None              # group shown for every file (None: the mount's group)
    file_mode: int = 0o444              # permission bits of data and metadata.json
    dir_mode: int = 0o555               # permission bits of the directories
    read_deadline: float = 30.0         # a read answers EIO after this long at most
    profile_dir: Path | None = None     # boot profiles (None: <cache dir>/profiles)
    profile_window: float = 120.0       # seconds of reads a recording covers (0: none)
    retry: RetryPolicy = RetryPolicy()  # metadata calls and block fetches; the mount's
    #                                     deadline is read_deadline

    def __post_init__(self):
        if self.block_size < 64 * KiB or self.block_size > 64 * MiB \
                or self.block_size & (self.block_size - 1):
            raise ConfigError("block size must be a power of two from 64K to 64M")
        if self.memory_cache < 2 * self.block_size:
            raise ConfigError("the memory cache must hold at least two blocks")
        if self.cache_size < 0:
            raise ConfigError("cache size must be >= 0 (0 disables the disk tier)")
        if self.fetch_threads < 1:
            raise ConfigError("fetch threads must be >= 1")
        for name in ("file_mode", "dir_mode"):
            if not 0 <= getattr(self, name) <= 0o777:
                raise ConfigError(f"--{name.replace('_', '-')} must be permission bits, "
                                  "e.g. 0440")
        if self.file_mode & 0o222 or self.dir_mode & 0o222:
            raise ConfigError("the mount is read-only: --file-mode and --dir-mode take no "
                              "write bits")
        if self.profile_window < 0:
            raise ConfigError("--profile-window must be >= 0 seconds (0: no recording)")
        if self.max_readahead < 0:
            raise ConfigError("--readahead must be >= 0 (0 turns it off)")
        if not self.read_deadline > 0:
            raise ConfigError("the read deadline must be > 0 seconds")
        if self.list_ttl < 0 or self.record_ttl < 0:
            raise ConfigError("TTLs must be >= 0 seconds")



def format_size(n: int) -> str:
    """Bytes as ``parse_size`` reads them, in the largest unit that divides them:
    ``20G``, ``256K``, ``0``."""
    for unit, letter in ((GiB << 10, "T"), (GiB, "G"), (MiB, "M"), (KiB, "K")):
        if n and n % unit == 0:
            return f"{n // unit}{letter}"
    return str(n)


def format_mode(mode: int) -> str:
    """Permission bits as ``parse_mode`` reads them: ``0444``."""
    return f"0{mode:03o}"


def _absolute(text: str) -> Path:
    return Path(text).absolute()


#: ``MountConfig`` field -> (the ``imagefs mount`` option's dest, how its text is read,
#: whether an empty text means the default as no option does).  An option not given
#: (None) leaves the field's default, which is written once: in ``MountConfig``.
_FROM_OPTIONS = {
    "cache_dir": ("cache_dir", _absolute, True),
    "cache_size": ("cache_size", parse_size, False),
    "cache_min_free": ("cache_min_free", parse_free_space, False),
    "memory_cache": ("memory_cache", parse_size, False),
    "block_size": ("block_size", parse_size, False),
    "fetch_threads": ("fetch_threads", int, False),
    "max_readahead": ("readahead", parse_size, False),
    "read_ahead_kb": ("kernel_readahead", lambda text: parse_size(text) // KiB, False),
    "list_ttl": ("list_ttl", float, False),
    "record_ttl": ("record_ttl", float, False),
    "read_deadline": ("read_deadline", float, False),
    "allow_other": ("allow_other", bool, False),
    "uid": ("uid", parse_user, True),
    "gid": ("gid", parse_group, True),
    "file_mode": ("file_mode", parse_mode, False),
    "dir_mode": ("dir_mode", parse_mode, False),
    "profile_dir": ("profile_dir", _absolute, True),
    "profile_window": ("profile_window", float, False),
}


def config_from_args(args) -> MountConfig:
    """The settings an ``imagefs mount`` command line gives (``imagefs.commands.mount``)."""
    given = {}
    for field, (dest, read, empty_is_default) in _FROM_OPTIONS.items():
        text = getattr(args, dest)
        if text is None or (empty_is_default and not text):
            continue
        given[field] = read(text)
    deadline = given.get("read_deadline", MountConfig.read_deadline)
    return MountConfig(**given, retry=RetryPolicy(deadline=deadline))
