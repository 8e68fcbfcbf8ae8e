"""keep_freed_memory: XLA:CPU's per-step buffers stop faulting pages in again."""

import subprocess
import sys

import pytest

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


def _page_faults(mode: str) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True,
                         text=True, timeout=120).stdout.split()
    return int(out[0]), float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_keep_freed_memory_cuts_page_faults_and_changes_no_result():
    default_faults, default_sum = _page_faults("default")
    kept_faults, kept_sum = _page_faults("keep")
    assert kept_sum == default_sum
    assert kept_faults * 4 < default_faults, (kept_faults, default_faults)
