"""Process and compiler settings: malloc for the project's own processes, XLA options per backend."""

from __future__ import annotations

import ctypes
import functools

import jax

# XLA:CPU options for the generation engine's programs (prefill; decode loops of up to 32 rows):
# dots go to XLA's own emitter (Eigen) instead of the YNNPACK / XNNPACK fusions jaxlib 0.10 picks
# by default. On the 2-core AMD EPYC box (AVX2, float32, the benchmarks' mid shape), alternating
# in one process: greedy generation at batch 16 491-511 vs 405-431 tokens/s; prefill + first
# step for 64 prompts of 32-64 tokens 1.61-1.64 vs 1.77-1.82 s (benchmarks/README.md). Training
# steps showed no difference and keep the default. These are DebugOptions fields; other
# backends never see them.
XLA_CPU_OPTIONS = {"xla_cpu_use_xnnpack": False, "xla_cpu_experimental_ynn_fusion_type": ""}

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


def on_cpu() -> bool:
    """Whether programs compile for XLA:CPU (the default backend is the CPU)."""
    return jax.default_backend() == "cpu"


def jit(fun=None, /, **jit_kwargs):
    """``jax.jit`` that compiles with ``XLA_CPU_OPTIONS`` when the default backend is the CPU.

    Same arguments as ``jax.jit`` (usable as a decorator, with or without ``functools.partial``).
    The backend is looked up at call time, so one decorated function serves CPU-only and
    accelerator processes; each backend gets its own compilation cache. ``.default`` is the plain
    ``jax.jit`` of the same function (XLA's default options everywhere).
    """
    if fun is None:
        return functools.partial(jit, **jit_kwargs)
    if "compiler_options" in jit_kwargs:
        raise ValueError("runtime.jit sets compiler_options itself; use jax.jit to pass your own")
    cpu_tuned = jax.jit(fun, compiler_options=dict(XLA_CPU_OPTIONS), **jit_kwargs)
    default = jax.jit(fun, **jit_kwargs)
    pick = lambda: cpu_tuned if on_cpu() else default  # noqa: E731

    @functools.wraps(fun)
    def call(*args, **kwargs):
        return pick()(*args, **kwargs)

    call.lower = lambda *args, **kwargs: pick().lower(*args, **kwargs)
    call.default = default
    return call
