"""Process and compiler settings: malloc for the project's own processes, XLA options per backend."""

from __future__ import annotations

import ctypes
import functools

import jax

# XLA:CPU options that send dots to XLA's own emitter (Eigen) instead of the YNNPACK / XNNPACK
# fusions jaxlib 0.10 picks by default. Which is faster depends on the CPU (``xla_dots_win``).
# These are DebugOptions fields; other backends never see them.
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


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The host CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def xla_dots_win(rows: int | None) -> bool:
    """Whether ``XLA_CPU_OPTIONS`` (XLA's own dots) beat the default YNNPACK dots for a program
    whose matmuls have ``rows`` rows (a decode step: its batch), or for a prefill (``None``).

    Measured with the benchmarks' mid shape in float32, alternating the two programs in one
    process (benchmarks/README.md):

    - AVX2 (2-core AMD EPYC): XLA's dots win up to 32 decode rows (batch 16: 491-511 vs 405-431
      tokens/s) and the prefill (64 prompts: 1.61 vs 1.77 s); YNNPACK wins at 64 rows.
    - AVX-512 (2-core AMD EPYC, Zen 5): YNNPACK wins from 4 rows (batch 16: 1,529 vs 1,402
      tokens/s, batch 32: 1,850 vs 1,488) and ties on the prefill; XLA's dots only at 1-2 rows.
    Training steps keep the default on both (no gain on AVX2; on AVX-512 the default is faster).
    """
    avx512 = "avx512f" in cpu_flags()
    if rows is None:
        return not avx512
    return rows <= (2 if avx512 else 32)


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
