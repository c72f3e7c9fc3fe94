"""hbpn.pipeline.memory.retain_freed_memory: big blocks reused, not mapped afresh (glibc only)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hbpn.pipeline.memory import _glibc

# In a child process: the setting is process-wide, and the mapped-block count is what it changes.
CHILD = """
import sys
from hbpn.pipeline.memory import _MallInfo2, _glibc, heap_free_bytes, retain_freed_memory
libc = _glibc()
libc.mallinfo2.restype = _MallInfo2
applied = retain_freed_memory() if sys.argv[1] == "retain" else None
before = libc.mallinfo2().hblks
block = bytearray(64 * 2**20)  # over glibc's largest mmap threshold (32 MiB)
mapped = libc.mallinfo2().hblks - before
del block
print(applied, mapped, heap_free_bytes() >= 64 * 2**20)
"""

glibc = pytest.mark.skipif(_glibc() is None, reason="retain_freed_memory is glibc-only")


def _child(mode: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return done.stdout.split()


@glibc
def test_big_blocks_come_from_the_heap_and_stay_free_in_it() -> None:
    assert _child("system")[1:] == ["1", "False"]  # the default: a fresh mapping, unmapped on free
    assert _child("retain") == ["True", "0", "True"]  # from the heap, and kept there, counted as free


def test_retain_freed_memory_is_a_no_op_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    import hbpn.pipeline.memory as mem

    monkeypatch.setattr(mem, "_glibc", lambda: None)
    assert mem.retain_freed_memory() is False and mem.heap_free_bytes() == 0
