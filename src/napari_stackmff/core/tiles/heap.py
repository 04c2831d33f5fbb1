"""Keep freed tensor memory in the process heap while a fusion runs (Linux with glibc).

Why: glibc serves every block above its mmap threshold (32 MiB at most) with fresh pages from the kernel
and unmaps them on free. A V2 forward on a 15 x 384² stack makes dozens of 70 MB activations, so the
kernel zero-fills and page-faults gigabytes per forward. With mmap off and trimming deferred, a freed
block is reused at once: one forward 2.0-2.5 s -> 1.6 s on the 2-core machine (glibc 2.36, same run,
env MALLOC_MMAP_MAX_=0 + MALLOC_TRIM_THRESHOLD_; either alone does nothing or is 2x slower), and the
whole-pipeline figures are in benchmarks/bench_scale.py. Shortly after the outermost run ends, free pages
go back to the system (``malloc_trim``), so a napari session does not keep the peak.

Between runs glibc's limits are put back (its adaptive mmap threshold stays fixed at the value it had
reached). ``STACKMFF_HEAP_REUSE=0`` turns all of it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

#: mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: glibc's defaults (mallopt(3)), put back between runs. Setting the trim threshold fixes the mmap threshold
#: at its current value (glibc stops adapting it): between runs big blocks are mmapped and returned again.
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM_THRESHOLD = 128 * 1024

#: Seconds after the outermost run ends before free pages go back to the system: a batch's next stack
#: starts within this and finds the heap warm (a trim after every stack made each start fault its
#: activations in again); an idle napari session gets its memory back.
TRIM_DELAY_S = 2.0

_lock = threading.Lock()
_depth = 0
_timer: threading.Timer | None = None
_libc: ctypes.CDLL | None | bool = None  # None: not looked up yet; False: not glibc / turned off


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux") and os.environ.get("STACKMFF_HEAP_REUSE", "1") != "0":
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") and hasattr(lib, "gnu_get_libc_version"):
                    _libc = lib
            except OSError:
                pass
    return _libc or None


def enabled() -> bool:
    """Whether heap reuse applies in this process (Linux glibc, not turned off by the environment)."""
    return _glibc() is not None


@contextmanager
def heap_reuse() -> Iterator[None]:
    """Within: large blocks come from the reusable heap. On leaving the outermost one: free pages are
    returned to the system. Safe to nest and to enter from several threads."""
    global _depth
    lib = _glibc()
    if lib is None:
        yield
        return
    global _timer
    with _lock:
        if _timer is not None:  # the next run came soon: keep the warm heap
            _timer.cancel()
            _timer = None
        if _depth == 0:
            lib.mallopt(_M_MMAP_MAX, 0)
            lib.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # a C int: as high as it goes
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _timer = threading.Timer(TRIM_DELAY_S, _trim)
                _timer.daemon = True
                _timer.start()


def _release(lib: ctypes.CDLL) -> None:
    """Free pages back to the system, and glibc's usual limits back, so that memory the rest of the process
    frees between runs (a napari layer deleted) is returned as it was before."""
    lib.malloc_trim(0)
    lib.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    lib.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)


def _trim() -> None:
    global _timer
    lib = _glibc()
    with _lock:
        if _depth == 0 and lib is not None:
            _release(lib)
        _timer = None
