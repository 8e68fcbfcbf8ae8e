"""Splitting work between processes and bringing Python results back together.

Evaluation scales over hosts this way (:func:`map_over_processes`): each process takes its
contiguous block of the queries (:func:`process_shard`), runs it with agents on its own devices
(:func:`local_mesh`), and the blocks are gathered back in the original order. Objects travel
through the coordination service's key-value store (:func:`gather_objects`), not through device
collectives, so any picklable result can, and a peer that never arrives is an error after a
timeout rather than a hang.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import jax
from jax.sharding import Mesh

from disrouter_jax import sharding as sharding_lib
from disrouter_jax.distributed import jax_internals

T = TypeVar("T")


def process_shard_bounds(num_items: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of process ``process_index``'s contiguous block of ``num_items`` items; the
    first ``num_items % process_count`` processes get one item more."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count})")
    base, extra = divmod(num_items, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (1 if process_index < extra else 0)


def process_shard(items: Sequence[T], process_index: int | None = None, process_count: int | None = None) -> list[T]:
    """This process's contiguous block of ``items``: the blocks of all processes, in process
    order, concatenate back to ``items`` (so gathered results keep the original order)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    start, stop = process_shard_bounds(len(items), index, count)
    return list(items[start:stop])


_gather_calls = 0


def gather_objects(obj: Any, *, timeout_s: int = 600) -> list[Any]:
    """``[obj of process 0, obj of process 1, ...]`` on every process (any picklable object),
    through the coordination service's key-value store. Every process must call it, in the same
    order; a peer that never arrives raises after ``timeout_s``."""
    global _gather_calls
    if jax.process_count() == 1:
        return [obj]
    client = jax_internals.coordination_state().client
    _gather_calls += 1
    prefix = f"disrouter/gather/{_gather_calls}"
    client.key_value_set_bytes(f"{prefix}/{jax.process_index()}", pickle.dumps(obj))
    gathered = [
        pickle.loads(client.blocking_key_value_get_bytes(f"{prefix}/{index}", timeout_s * 1000))
        for index in range(jax.process_count())
    ]
    # Nobody deletes before everyone has read; then each process deletes its own key.
    client.wait_at_barrier(f"{prefix}/read", timeout_s * 1000)
    client.key_value_delete(f"{prefix}/{jax.process_index()}")
    return gathered


def map_over_processes(fn, items: Sequence[T], *, timeout_s: int = 3600) -> list:
    """``fn(items)`` computed as ``fn`` of each process's block (:func:`process_shard`), gathered
    back in the original order on every process. ``fn`` must return one result per item.

    This is how evaluation scales over hosts: each process runs the whole cascade on its own
    queries with agents on its :func:`local_mesh`, and process 0 writes the gathered records.
    """
    local_items = process_shard(items)
    local_results = list(fn(local_items))
    if len(local_results) != len(local_items):
        raise ValueError(f"map_over_processes: fn returned {len(local_results)} results for {len(local_items)} items")
    return [result for block in gather_objects(local_results, timeout_s=timeout_s) for result in block]


def local_mesh(config: sharding_lib.MeshConfig | Mapping[str, int] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over this process's devices only: for work that each host
    does on its own (e.g. evaluating its block of queries), with no cross-host collectives."""
    return sharding_lib.make_mesh(config, devices=jax.local_devices())


def barrier(name: str, *, timeout_s: int = 600) -> None:
    """Waits until every process reaches ``barrier(name)``; raises after ``timeout_s``."""
    if jax.process_count() == 1:
        return
    jax_internals.coordination_state().client.wait_at_barrier(f"disrouter/barrier/{name}", timeout_s * 1000)
