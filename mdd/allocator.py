"""Keep freed memory in the process: glibc's malloc settings for tensor-sized blocks.

By default glibc serves every block above a dynamic threshold (128 KiB to 32 MiB) with a
fresh ``mmap`` and returns it to the system when freed, and trims the heap's top when
128 KiB of it are free. A training step allocates and frees the same activation tensors
(megabytes each) every step, so each step faults them in again page by page: on a 2-core
CPU the evaluation spent a third of its CPU time in the kernel (issue 13's measurement).
Serving those blocks from the heap and never trimming it keeps them mapped; the process
holds on to its peak memory instead of handing it back between steps.

``tune_allocator`` runs when ``mdd`` is imported, so every entry point (``mdd``,
``mdd-run``, ``mdd-sweep``, the benchmarks and the tests) gets it before it allocates
tensors. ``MDD_MALLOC=system`` leaves glibc's defaults alone. Elsewhere than glibc
(musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

SETTINGS = {
    M_MMAP_THRESHOLD: 1 << 30,  # blocks under 1 GiB come from the heap, not from mmap
    M_TRIM_THRESHOLD: (1 << 31) - 1,  # never give the heap's free top back
    M_TOP_PAD: 64 << 20,  # grow the heap 64 MiB at a time
}
OFF_VALUE = "system"


def tune_allocator() -> bool:
    """Apply ``SETTINGS`` through glibc's ``mallopt``; False where it was off or impossible."""
    if os.environ.get("MDD_MALLOC", "").strip().lower() == OFF_VALUE:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
