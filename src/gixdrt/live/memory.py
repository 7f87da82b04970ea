"""Frame-sized allocations in a long-running live process.

A decoded EIGER2 4M frame is ~9 MB; glibc serves allocations that large with a fresh ``mmap`` each time and
returns them with ``munmap``, so every frame pays for faulting in and zeroing its pages (~2 ms per 4-Mpx 16-bit
frame on the CI machine: the live path decoded at 0.7× the rate of the decoder alone). Raising glibc's mmap and
trim thresholds keeps such blocks on the heap, where a freed frame's memory is reused by the next one.
:func:`reuse_frame_memory` does that for the process; ``gixdrt stream`` and ``gixdrt demo --live`` call it. It
changes nothing where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["reuse_frame_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done: bool | None = None


def reuse_frame_memory(largest: int = 256 << 20) -> bool:
    """Keep allocations up to ``largest`` bytes (default 256 MiB) on the heap and the freed heap mapped (glibc
    ``mallopt``), once per process → True when applied (False where the C library is not glibc)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, int(largest))) and bool(mallopt(_M_TRIM_THRESHOLD, 4 * int(largest)))
    _done = ok
    return ok
