"""``python -m disrouter_jax.distributed --selftest``: a smoke test for the launch/ scripts.

It exercises what a training run relies on across processes: ``initialize``, a batch that every
process holds whole placed over every device of the job (as the train step places its batches),
a jitted reduction over it, and an object gather through the coordination service.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import jax
import numpy as np

from disrouter_jax import distributed
from disrouter_jax import sharding as sharding_lib
from disrouter_jax.distributed import work


def selftest(expect_processes: int | None = None) -> int:
    """Initialises, sums a global array sharded over every device of the job and checks the
    value against numpy; returns a process exit code."""
    from disrouter_jax.training.state import shard_batch

    info = distributed.initialize()
    if expect_processes is not None and info.num_processes != expect_processes:
        print(f"selftest FAILED: {info.num_processes} processes, expected {expect_processes}", flush=True)
        return 1
    mesh = sharding_lib.make_mesh(sharding_lib.MeshConfig(data=1, fsdp=-1, tensor=1))
    rows = 2 * jax.device_count()
    full_rc = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    global_rc = shard_batch(full_rc, sharding_lib.ShardingContext(mesh))
    total = float(sharding_lib.to_host(jax.jit(lambda x: (x * x).sum())(global_rc)))
    expected = float((full_rc * full_rc).sum())
    hosts = work.gather_objects(jax.process_index())
    ok = total == expected and hosts == list(range(jax.process_count()))
    print(
        f"selftest {'ok' if ok else 'FAILED'}: process {jax.process_index()} of {jax.process_count()} "
        f"({info.source}), {jax.local_device_count()} local / {jax.device_count()} global devices, "
        f"sum={total} expected={expected}",
        flush=True,
    )
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m disrouter_jax.distributed",
                                     description="Multi-process (multi-host) runs on JAX's multi-controller runtime.")
    parser.add_argument("--selftest", action="store_true", help="initialise, run a cross-process sum, exit")
    parser.add_argument("--expect-processes", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.selftest:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO)
    return selftest(args.expect_processes)
