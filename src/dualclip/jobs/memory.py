"""Keeping a long job's memory flat: big transient buffers go back to the OS instead of fragmenting the heap."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["return_large_blocks_to_the_os"]

_M_MMAP_THRESHOLD = -3


def return_large_blocks_to_the_os(threshold: int = 1 << 20) -> bool:
    """glibc only: allocations of `threshold` bytes and more are mmapped and unmapped when freed.

    By default glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which a
    model's activations (tens of MiB per batch) come from the heap, whose freed space is kept and fragments: the
    resident size of an embedding job then creeps up over its first shards. A fixed threshold keeps it flat. This
    changes the whole process, so the `dualclip` commands call it, not the library functions.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
