"""The process's memory allocator, tuned for tensor work (no torch here: the CLI calls it
before importing anything heavy)."""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h) and the values tune_malloc sets.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_SETTINGS = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 256 << 20}
_malloc_tuned: bool | None = None


def user_tuned(env) -> bool:
    """Whether the environment already sets glibc malloc's parameters, or opts out."""
    return (env.get("DIFFORGE_MALLOC") == "system" or any(k.startswith("MALLOC_") for k in env)
            or "glibc.malloc" in env.get("GLIBC_TUNABLES", ""))


def tune_malloc() -> bool:
    """Keep freed activation buffers in the process instead of handing them back to the OS.

    glibc serves blocks above its mmap threshold (128 KiB, raised dynamically) with fresh
    pages from the kernel and returns the top of the heap when more than the trim threshold
    is free, so every forward pass of a batch page-faults its activations in again: a third
    of sampling's CPU time went to the kernel (benchmarks/inference.py records it). This sets
    the mmap threshold to glibc's maximum (32 MiB), the trim threshold to 1 GiB and a top pad
    of 256 MiB, so the heap grows once and is reused. The cost: the peak memory stays
    mapped until the process exits. Only on Linux with glibc; skipped (False) elsewhere, when
    the user tunes malloc already (a MALLOC_* variable, or GLIBC_TUNABLES naming glibc.malloc),
    or when DIFFORGE_MALLOC=system. Idempotent; the CLI calls it before every command;
    Python users call it once at start-up.
    """
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    _malloc_tuned = False
    if not sys.platform.startswith("linux") or user_tuned(os.environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _malloc_tuned = all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.items())
    return _malloc_tuned
