"""The daemon's malloc settings: freed block memory stays in the heap for the next blocks."""

import subprocess
import sys

import pytest

# Each case runs in a fresh interpreter: mallopt settings last for the process.
_PROBE = """
import ctypes, sys
from imagefs.malloc import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory(1 << 20, 256 << 20)
size = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 20
blocks = [bytes(size) for _ in range((64 << 20) // size)]   # 64 MiB of blocks
held = libc.mallinfo2()
del blocks                                      # evicted
freed = libc.mallinfo2()
# bytes in mmaps while held; heap bytes kept from the system after the free
print(held.hblkhd, freed.arena)
"""


def _probe(mode: str, size: int = 1 << 20) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode, str(size)], check=True,
                         capture_output=True, text=True).stdout
    mapped, kept = map(int, out.split())
    return mapped, kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_blocks_stay_for_reuse():
    # glibc's defaults give the freed memory back (the probe can tell) ...
    mapped, kept = _probe("default")
    assert mapped >= 32 << 20 or kept < 16 << 20
    # ... with the daemon's settings the 64 MiB stay in the heap for the next blocks.
    mapped, kept = _probe("keep")
    assert mapped < 8 << 20
    assert kept >= 64 << 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_a_4_mib_read_buffer_comes_from_the_heap():
    # An RBD stream's 4 MiB reads (and librados' receive buffers) are just over
    # 4 MiB with their headers: they must not get an mmap of fresh pages each.
    mapped, kept = _probe("keep", 4 << 20)
    assert mapped < 8 << 20
    assert kept >= 64 << 20
