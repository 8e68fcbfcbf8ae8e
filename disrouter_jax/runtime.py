"""Process-wide settings for the project's own command-line processes."""

from __future__ import annotations

import ctypes

# mallopt options from <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    XLA:CPU allocates and frees megabytes of buffers at every step. By default glibc returns them
    (from the per-thread arenas of XLA's threads, or above its mmap threshold) and every page
    faults in again at the next step: on the toy agents ~20k page faults per step and a third of
    the training time went to the kernel. One arena with high mmap and trim thresholds keeps the
    memory (the process stays at its peak instead). It changes where buffers live, never what is
    computed. Call it at the start of a process the project owns (a CLI ``main``, a worker),
    before JAX starts its threads. Returns False where there is no glibc (nothing is changed).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(option, value) == 1 for option, value in settings)  # 1 = accepted
