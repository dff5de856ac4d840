"""The host allocator: keep freed CPU tensor memory in the process so that eager forwards stop
page-faulting their activations anew on every pass.

PyTorch's CPU tensors come from the C library's ``malloc``. GNU libc serves a block above its mmap
threshold (128 KiB at start, raised on the fly to the largest block freed so far, at most 32 MiB)
with fresh ``mmap``'ed pages and returns its heap's free top to the system past its trim threshold
(twice the mmap threshold). An eager forward's intermediate tensors are 1–25 MB, allocated and freed
once per layer, so each pass maps, faults in and unmaps them again: how slow a forward is then
depends on what the process happened to free before. Measured here (bundled EfficientNet-Lite0,
batch 4, 2 cores, eager, median of 40): 64–74 ms per forward in a fresh process, 46–53 ms after
``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``, at the same maximum
resident set (866 against 875 MB); ``benchmarks/allocator.py`` measures it side by side. The price:
memory freed below 1 GiB stays with the process (each thread's arena keeps what its busiest moment
needed) instead of going back to the system, so a server's resident set stays at its peak.

This is process-wide, so the library never does it on import: ``python app.py`` and the command
line call :func:`tune_host_allocator` when they start; a library user may call it too.
``FUSIONCAM_TUNE_MALLOC=0`` leaves the allocator alone. Elsewhere than GNU libc (macOS, Windows,
musl) it does nothing; jemalloc or tcmalloc preloaded instead make it moot.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

SWITCH = "FUSIONCAM_TUNE_MALLOC"       # "0" leaves malloc as it is
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # mallopt's parameters in <malloc.h>
MMAP_THRESHOLD = 32 << 20              # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def tune_host_allocator() -> bool:
    """Set GNU libc's ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_TRIM_THRESHOLD`` to 1 GiB (see the module
    doc); ``True`` when both were set, ``False`` where switched off or not GNU libc."""
    if os.environ.get(SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not done:
        log.warning("could not tune malloc (mallopt refused); eager CPU forwards may be slower")
    return done
