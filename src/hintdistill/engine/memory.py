"""glibc's malloc thresholds for training (``speed.keep_freed_memory``, on by default for ``hintdistill run``).

glibc serves a block above ``M_MMAP_THRESHOLD`` with a mapping of its own, unmapped when freed, and gives the top
of its heap back to the system once more than ``M_TRIM_THRESHOLD`` of it is free. Both adapt to the largest block
freed so far (the trim threshold to twice it), but a training step frees and allocates its activations, megabytes
each, every step: glibc keeps returning those pages and the next step faults them in again, zero-filled. On this
project's CPU that was a fifth of a Fashion-MNIST CNN step (benchmarks/RESULTS.md). Fixed thresholds keep the pages:
blocks up to 32 MiB (glibc's largest allowed threshold) come from the heap, and the heap is trimmed only past 2 GiB
free. The resident memory then stays near its peak instead of falling between steps. No number changes.

Setting either threshold through ``mallopt`` turns off glibc's adaptation of both, so they are set together (the
trim threshold alone made every block above 128 KiB a fresh mapping: steps twice as slow). Nothing is done where
the C library is not glibc, another allocator is preloaded (jemalloc, tcmalloc, mimalloc) or the environment sets
glibc's malloc options itself.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit systems (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # the largest int: trimmed only past 2 GiB free at the top of the heap
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_done: str | None = None


def why_not() -> str | None:
    """Why the thresholds are left as they are in this process, or None where they can be set."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    preload = os.environ.get("LD_PRELOAD", "")
    other = [name for name in ("jemalloc", "tcmalloc", "mimalloc") if name in preload]
    if other:
        return f"{other[0]} is preloaded"
    if any(k in os.environ for k in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "the environment sets glibc's malloc options"
    return None


def keep_freed_memory() -> str:
    """Fix glibc's thresholds (once per process); returns what was done, for the run's log."""
    global _done
    if _done is None:
        reason = why_not()
        if reason is None:
            libc = ctypes.CDLL("libc.so.6")
            ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            reason = None if ok else "glibc refused the thresholds"
        _done = (f"allocator: freed memory kept for reuse (glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim "
                 f"threshold 2 GiB; speed.keep_freed_memory)") if reason is None else \
            f"allocator: glibc's thresholds left as they are ({reason})"
    return _done
