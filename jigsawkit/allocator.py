"""Keep freed tensor memory in the process instead of handing it back to the kernel.

glibc's ``malloc`` serves every block over its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and unmaps it on ``free``. A CPU forward pass allocates and frees activations of
that size at every call (a batch of 256 images of 96 px through a 32-channel conv is
302 MB), so each one is page-faulted in and zeroed by the kernel again: in the quickstart's
feature extraction the kernel's share of the CPU time was 57% (``bench/quickstart_speed.py``).
``retain_freed_memory`` makes glibc serve large blocks from its heap and keep freed ones
for reuse, as jemalloc or tcmalloc would. Resident memory then stays at the process's peak
instead of dropping between batches; the peak itself is unchanged.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Free memory kept at the top of the heap before glibc trims it.
_TRIM_THRESHOLD = 1 << 30

_applied = False


def _user_tuned_malloc() -> bool:
    """Whether the environment already tunes glibc's malloc (then it is left as it is)."""
    if any(name.startswith("MALLOC_") and name.endswith("_") for name in os.environ):
        return True
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def retain_freed_memory() -> bool:
    """Tune glibc's malloc for tensor workloads (see the module docstring), once per process.

    Returns True when the setting is in force: on Linux with glibc, unless the environment
    already tunes malloc (``MALLOC_*_`` variables or ``GLIBC_TUNABLES``). Elsewhere it does
    nothing and returns False.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or _user_tuned_malloc():
        return False
    try:
        libc = ctypes.CDLL(None)
        gnu_get_libc_version = libc.gnu_get_libc_version  # absent on musl: not glibc
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    del gnu_get_libc_version
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success. No mmap for large blocks, and no trimming of the heap
    # top below 1 GiB of free memory, so freed activations are reused, not faulted in again.
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _applied
