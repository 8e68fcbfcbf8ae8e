"""keep_freed_memory: XLA:CPU's per-step buffers stop faulting pages in again."""

import os
import subprocess
import sys

import pytest

from tests.conftest import child_xla_flags

_PROBE = """
import resource, sys
from disrouter_jax import runtime
if sys.argv[1] == "keep":
    assert runtime.keep_freed_memory()
import jax, jax.numpy as jnp
# A [4096, 4096] float32 intermediate (64 MB) is above glibc's largest default mmap threshold:
# by default it is mapped and unmapped at every call.
step = jax.jit(lambda x: jnp.tanh(x @ x.T / 64.0) @ x / 4096.0 + x)
x = jax.random.normal(jax.random.PRNGKey(0), (4096, 64), jnp.float32)
x = step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    x = step(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, float(x.sum()))
"""


def _page_faults(*modes: str) -> list[tuple[int, float]]:
    """The probe once per mode, in processes side by side (page faults are counted per process)."""
    # XLA's default optimisation level (what is measured is the run's memory, not its compilation;
    # the session's O0 makes the programs fault pages of their own).
    env = dict(os.environ, XLA_FLAGS=child_xla_flags(8, optimized=True))
    procs = [subprocess.Popen([sys.executable, "-c", _PROBE, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for mode in modes]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]
            faults, total = out.split()
            results.append((int(faults), float(total)))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_keep_freed_memory_cuts_page_faults_and_changes_no_result():
    (default_faults, default_sum), (kept_faults, kept_sum) = _page_faults("default", "keep")
    assert kept_sum == default_sum
    # Side by side, 17 draws on a 2-core AVX-512 EPYC: default 343k-370k faults, kept 33k-108k (the
    # kept count depends on which XLA thread allocates; alone it is ~17k). Without the setting the
    # two counts are alike.
    assert kept_faults * 2 < default_faults, (kept_faults, default_faults)


def test_jit_compiles_cpu_programs_with_xlas_own_dots():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from disrouter_jax import runtime

    @runtime.jit(static_argnames=("scale",))
    def project(x, w, *, scale):
        return jnp.tanh(x @ w) * scale

    x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 64)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((64, 96)), jnp.float32)
    expected = jax.jit(project.__wrapped__, static_argnames=("scale",))(x, w, scale=2.0)
    np.testing.assert_allclose(np.asarray(project(x, w, scale=2.0)), np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert jax.default_backend() == "cpu"
    text = project.lower(x, w, scale=2.0).compile().as_text()
    assert " dot(" in text and "__ynn_fusion" not in text and "__xnn_fusion" not in text
    with pytest.raises(ValueError, match="compiler_options"):
        runtime.jit(project.__wrapped__, compiler_options={})


def test_cpu_flags_are_read_once_from_proc_cpuinfo():
    from disrouter_jax import runtime

    flags = runtime.cpu_flags()
    assert isinstance(flags, frozenset) and runtime.cpu_flags() is flags
    try:
        with open("/proc/cpuinfo") as f:
            x86 = any(line.startswith("flags") for line in f)
    except OSError:
        x86 = False
    if x86:
        assert "fpu" in flags and "sse2" in flags


def test_xla_dots_win_only_for_few_rows_on_avx512(monkeypatch):
    from disrouter_jax import runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2"}))
    assert [runtime.xla_dots_win(r) for r in (1, 16, 32, 33, 64)] == [True, True, True, False, False]
    assert runtime.xla_dots_win(None)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert [runtime.xla_dots_win(r) for r in (1, 2, 3, 16)] == [True, True, False, False]
    assert not runtime.xla_dots_win(None)
