"""Memory that per-frame work reuses instead of asking the kernel for it again and again, and BLAS threads that do not
outnumber the cores.

Two allocator defaults cost prepare a large share of its time on the 2-core box (docs/PERFORMANCE.md, "prepare"):

- glibc hands a freed block above 128 kB (its mmap threshold, raised only by what was freed before) and a heap top
  above its trim threshold back to the kernel at once. A loop that allocates and frees a few megabytes a frame (numpy
  arrays of a 512 px crop, mediapipe's and TFLite's buffers) then takes thousands of first-touch page faults a frame:
  one person pass over a real 17.5 s clip took 1.27 million faults and spent a third of its CPU in the kernel.
- numpy asks for transparent huge pages (madvise) on every array of 4 MB or more. Where the kernel then compacts
  memory before it faults such an array in (THP defrag "madvise", the Debian default, on a machine that has run a
  while), first touching 88 MB took 0.83 s instead of 0.04 s.

And OpenBLAS runs a thread per core that spins while it waits: in a process beside busy workers on every core (prepare
fitting expressions while its workers track torsos), a 0.4 s decomposition took 1.5-3 s.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
_SETTINGS_MB = ((_M_MMAP_THRESHOLD, 64), (_M_TRIM_THRESHOLD, 512), (_M_TOP_PAD, 16))
"""Blocks under 64 MB come from the heap, up to 512 MB of freed heap is kept, and the heap grows 16 MB at a time."""


def tune_process() -> None:
    """For the rest of this process: ``_SETTINGS_MB`` for glibc's allocator (elsewhere nothing changes), ordinary
    pages for numpy's arrays, and one thread for the BLAS libraries loaded so far."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _set_madvise_hugepage
    _set_madvise_hugepage(False)
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for option, mb in _SETTINGS_MB:
        mallopt(option, mb << 20)
