"""Multi-process (multi-host) runs on JAX's multi-controller runtime.

Every host runs the same program. After :func:`initialize`, ``jax.devices()`` lists the devices of
the whole job, a mesh built from them spans all hosts, and a jitted step on that mesh runs as one
SPMD program whose collectives cross hosts (ICI/DCN on TPU, NCCL on GPU, gloo on CPU).

One path for ``train`` and ``evaluate`` — call ``initialize()`` first thing, before any JAX call:

- one host, nothing configured: a no-op (``jax.distributed`` is never started);
- a cluster JAX recognises (Cloud TPU pod slice, SLURM, Open MPI, ...): auto-detected by JAX;
- anything else: explicit coordinator / process count / process id, as arguments or through the
  environment (``DISROUTER_COORDINATOR``, ``DISROUTER_NUM_PROCESSES``, ``DISROUTER_PROCESS_ID``;
  see :data:`ENV_VARS`), which is how ``launch/local.sh`` starts N processes on one machine.

A dead peer must not leave the others hanging: the coordination service declares a process dead
after ``heartbeat_timeout_s`` without heartbeats and every surviving process then terminates with
an error naming the dead task. Collectives usually fail sooner (the peer's sockets close).

Data: each process loads only its rows of every global batch (:func:`process_batch_rows`) and
:func:`global_batch_from_local` assembles the global array, which is bit-identical to the array a
single process holding the whole batch would build — so results do not depend on the process
count. :func:`process_shard` splits a list of work items (e.g. evaluation queries) and
:func:`gather_objects` brings per-process Python results back together.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import pickle
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from disrouter_jax import sharding as sharding_lib

logger = logging.getLogger(__name__)

T = TypeVar("T")

ENV_COORDINATOR = "DISROUTER_COORDINATOR"
ENV_NUM_PROCESSES = "DISROUTER_NUM_PROCESSES"
ENV_PROCESS_ID = "DISROUTER_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "DISROUTER_LOCAL_DEVICE_IDS"
ENV_CLUSTER = "DISROUTER_CLUSTER"
ENV_INIT_TIMEOUT = "DISROUTER_INIT_TIMEOUT_S"
ENV_HEARTBEAT_TIMEOUT = "DISROUTER_HEARTBEAT_TIMEOUT_S"
ENV_SHUTDOWN_TIMEOUT = "DISROUTER_SHUTDOWN_TIMEOUT_S"
ENV_VARS = (
    ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID, ENV_LOCAL_DEVICE_IDS, ENV_CLUSTER,
    ENV_INIT_TIMEOUT, ENV_HEARTBEAT_TIMEOUT, ENV_SHUTDOWN_TIMEOUT,
)

# "auto": JAX's detection when nothing explicit is given; "none": never detect (explicit or one
# host). Any other value is a JAX cluster name handed to ``cluster_detection_method``.
CLUSTER_AUTO, CLUSTER_NONE = "auto", "none"
JAX_CLUSTERS = ("ompi", "slurm", "mpi4py", "gcetpu", "gketpu", "k8s")

DEFAULT_INIT_TIMEOUT_S = 300
DEFAULT_HEARTBEAT_TIMEOUT_S = 100  # JAX's own default
DEFAULT_SHUTDOWN_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class LaunchSettings:
    """What ``initialize`` was asked to do, after merging arguments with the environment."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    cluster: str = CLUSTER_AUTO
    initialization_timeout_s: int = DEFAULT_INIT_TIMEOUT_S
    heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S
    shutdown_timeout_s: int = DEFAULT_SHUTDOWN_TIMEOUT_S

    @property
    def explicit(self) -> bool:
        """Coordinator, process count and process id are all given."""
        return None not in (self.coordinator_address, self.num_processes, self.process_id)


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Result of :func:`initialize`. ``source``: "single" (no-op), "explicit", a JAX cluster name
    ("slurm", "gcetpu", ...) or "already" (``jax.distributed`` was started before)."""

    process_id: int
    num_processes: int
    coordinator_address: str | None
    source: str

    @property
    def is_coordinator(self) -> bool:
        return self.process_id == 0


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _env_ids(environ: Mapping[str, str], name: str) -> tuple[int, ...] | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a comma-separated list of ints") from None


def resolve_settings(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    *,
    cluster: str | None = None,
    initialization_timeout_s: int | None = None,
    heartbeat_timeout_s: int | None = None,
    shutdown_timeout_s: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> LaunchSettings:
    """Arguments win over ``DISROUTER_*`` environment variables, which win over defaults."""
    env = os.environ if environ is None else environ
    if isinstance(local_device_ids, int):
        local_device_ids = (local_device_ids,)

    def pick(value, from_env, default=None):
        return value if value is not None else (from_env if from_env is not None else default)

    settings = LaunchSettings(
        coordinator_address=pick(coordinator_address, env.get(ENV_COORDINATOR, "").strip() or None),
        num_processes=pick(num_processes, _env_int(env, ENV_NUM_PROCESSES)),
        process_id=pick(process_id, _env_int(env, ENV_PROCESS_ID)),
        local_device_ids=pick(
            None if local_device_ids is None else tuple(int(i) for i in local_device_ids),
            _env_ids(env, ENV_LOCAL_DEVICE_IDS),
        ),
        cluster=pick(cluster, env.get(ENV_CLUSTER, "").strip().lower() or None, CLUSTER_AUTO),
        initialization_timeout_s=pick(initialization_timeout_s, _env_int(env, ENV_INIT_TIMEOUT), DEFAULT_INIT_TIMEOUT_S),
        heartbeat_timeout_s=pick(heartbeat_timeout_s, _env_int(env, ENV_HEARTBEAT_TIMEOUT), DEFAULT_HEARTBEAT_TIMEOUT_S),
        shutdown_timeout_s=pick(shutdown_timeout_s, _env_int(env, ENV_SHUTDOWN_TIMEOUT), DEFAULT_SHUTDOWN_TIMEOUT_S),
    )
    _validate(settings)
    return settings


def _validate(s: LaunchSettings) -> None:
    if s.cluster not in (CLUSTER_AUTO, CLUSTER_NONE) + JAX_CLUSTERS:
        raise ValueError(
            f"cluster={s.cluster!r} (or ${ENV_CLUSTER}): expected one of "
            f"{(CLUSTER_AUTO, CLUSTER_NONE) + JAX_CLUSTERS}"
        )
    if s.num_processes is not None and s.num_processes < 1:
        raise ValueError(f"num_processes={s.num_processes} (or ${ENV_NUM_PROCESSES}) must be >= 1")
    if s.process_id is not None and s.process_id < 0:
        raise ValueError(f"process_id={s.process_id} (or ${ENV_PROCESS_ID}) must be >= 0")
    if None not in (s.num_processes, s.process_id) and s.process_id >= s.num_processes:
        raise ValueError(f"process_id={s.process_id} must be < num_processes={s.num_processes}")
    if s.coordinator_address is not None and ":" not in s.coordinator_address:
        raise ValueError(f"coordinator_address={s.coordinator_address!r} (or ${ENV_COORDINATOR}) must be host:port")
    for name in ("initialization_timeout_s", "heartbeat_timeout_s", "shutdown_timeout_s"):
        if getattr(s, name) < 1:
            raise ValueError(f"{name}={getattr(s, name)} must be >= 1 second")


def detect_cluster() -> tuple[str, int | None] | None:
    """(name, process count or None if unknown) of the first cluster JAX's auto-detection would
    pick, or None when none is present. Uses JAX's own detectors (``jax/_src/clusters``)."""
    from jax._src import clusters

    for env in clusters.ClusterEnv._cluster_types:
        if env.opt_in_only_method:
            continue
        try:
            present = env.is_env_present()
        except Exception as err:  # a detector that cannot run means "not this cluster"
            logger.debug("cluster detector %s failed: %s", env.__name__, err)
            present = False
        if present:
            try:
                count = int(env.get_process_count())
            except Exception:
                count = None
            return env.name, count
    return None


def slurm_local_device_ids(environ: Mapping[str, str] | None = None) -> tuple[int, ...] | None:
    """All GPUs of the node when SLURM runs one task per node, else None.

    JAX's SLURM detection assumes one process per GPU and restricts each process to GPU
    ``SLURM_LOCALID``; with one task per host that would silently leave all GPUs but one idle.
    """
    env = os.environ if environ is None else environ
    tasks_per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or ""
    counts = [part.split("(")[0] for part in tasks_per_node.split(",") if part]
    if not counts or any(count != "1" for count in counts):
        return None
    gpus = _env_int(env, "SLURM_GPUS_ON_NODE")
    if gpus is None and env.get("CUDA_VISIBLE_DEVICES", "").strip():
        gpus = len(env["CUDA_VISIBLE_DEVICES"].split(","))
    return tuple(range(gpus)) if gpus else None


def choose_source(settings: LaunchSettings, detected: tuple[str, int | None] | None) -> str:
    """"single", "explicit" or the JAX cluster name to initialise with (pure; see ``initialize``)."""
    if settings.explicit:
        return "single" if settings.num_processes == 1 else "explicit"
    given = {
        "coordinator_address": settings.coordinator_address,
        "num_processes": settings.num_processes,
        "process_id": settings.process_id,
    }
    partial = sorted(name for name, value in given.items() if value is not None)
    if settings.cluster == CLUSTER_NONE:
        if partial:
            missing = sorted(set(given) - set(partial))
            raise ValueError(
                f"cluster='none' with only {partial} set: also set {missing} "
                f"(or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID})"
            )
        return "single"
    if settings.cluster != CLUSTER_AUTO:
        if detected is None or detected[0] != settings.cluster:
            raise RuntimeError(
                f"cluster={settings.cluster!r} requested but JAX does not detect it here "
                f"(detected: {detected[0] if detected else 'nothing'})"
            )
        return settings.cluster
    if detected is None:
        if partial:
            missing = sorted(set(given) - set(partial))
            raise ValueError(
                f"multi-process settings {partial} given but {missing} missing and no cluster "
                f"(SLURM, Open MPI, Cloud TPU, ...) detected to fill them in"
            )
        return "single"
    name, count = detected
    if count == 1 and settings.num_processes in (None, 1):
        return "single"
    return name


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    *,
    cluster: str | None = None,
    initialization_timeout_s: int | None = None,
    heartbeat_timeout_s: int | None = None,
    shutdown_timeout_s: int | None = None,
    cpu_collectives: str = "gloo",
) -> ProcessInfo:
    """Starts ``jax.distributed`` when the run spans several processes; a no-op otherwise.

    Must run before anything touches a JAX backend (``jax.devices()``, any computation). Safe to
    call twice (the second call reports the running setup). ``cluster``: "auto" (default), "none",
    or a JAX cluster name; every argument may come from its ``DISROUTER_*`` environment variable.
    """
    from jax._src import distributed as jax_distributed

    if jax_distributed.global_state.client is not None:
        state = jax_distributed.global_state
        return ProcessInfo(state.process_id, state.num_processes, state.coordinator_address, "already")
    settings = resolve_settings(
        coordinator_address, num_processes, process_id, local_device_ids, cluster=cluster,
        initialization_timeout_s=initialization_timeout_s, heartbeat_timeout_s=heartbeat_timeout_s,
        shutdown_timeout_s=shutdown_timeout_s,
    )
    needs_detection = not settings.explicit and settings.cluster != CLUSTER_NONE
    source = choose_source(settings, detect_cluster() if needs_detection else None)
    if source == "single":
        return ProcessInfo(0, 1, None, "single")

    local_ids = settings.local_device_ids
    if local_ids is None and source == "slurm":
        local_ids = slurm_local_device_ids()
    # CPU backends exchange collectives over gloo (TCP) between processes; without it a
    # cross-process computation on CPU devices fails. GPU (NCCL) and TPU ignore this.
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=settings.coordinator_address,
        num_processes=settings.num_processes,
        process_id=settings.process_id,
        local_device_ids=None if local_ids is None else list(local_ids),
        cluster_detection_method="deactivate" if source == "explicit" else source,
        initialization_timeout=settings.initialization_timeout_s,
        heartbeat_timeout_seconds=settings.heartbeat_timeout_s,
        shutdown_timeout_seconds=settings.shutdown_timeout_s,
    )
    state = jax_distributed.global_state
    info = ProcessInfo(state.process_id, state.num_processes, state.coordinator_address, source)
    logger.info("jax.distributed initialised via %s: process %d of %d, coordinator %s",
                source, info.process_id, info.num_processes, info.coordinator_address)
    return info


def shutdown() -> None:
    """Leaves the job cleanly (a barrier over all processes). JAX also does this at exit."""
    jax.distributed.shutdown()


def is_coordinator() -> bool:
    """True on process 0, the one that writes reports, logs and exported files."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------------------------
# Splitting work and data between processes.


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


def _batch_axes(rules) -> tuple[str, ...]:
    return tuple(dict(sharding_lib.DEFAULT_RULES if rules is None else rules).get("batch", ()))


def _batch_sharding(mesh: Mesh, num_rows: int, rules) -> NamedSharding:
    """Sharding of a [num_rows] batch vector; an error unless every data-parallel axis splits it."""
    data_parallel = math.prod(mesh.shape[axis] for axis in _batch_axes(rules))
    spec = sharding_lib.logical_to_spec(("batch",), (num_rows,), mesh, rules)
    if num_rows % data_parallel or (data_parallel > 1 and spec[0] is None):
        raise ValueError(
            f"a global batch of {num_rows} rows does not divide over the data-parallel mesh axes "
            f"{_batch_axes(rules)} of total size {data_parallel} (mesh {dict(mesh.shape)})"
        )
    return NamedSharding(mesh, spec)


def process_batch_rows(global_batch_size: int, mesh: Mesh, rules=None) -> slice:
    """The rows of a global batch that this process loads for :func:`global_batch_from_local`.

    Follows the mesh's device placement, so the assembled global array equals the one a single
    process would build from the whole batch. Processes that replicate each other along the data
    axes get the same rows.
    """
    batch_sharding = _batch_sharding(mesh, global_batch_size, rules)
    indices = batch_sharding.addressable_devices_indices_map((global_batch_size,)).values()
    starts_stops = sorted({(index[0].indices(global_batch_size)[:2]) for index in indices})
    start, stop = starts_stops[0][0], starts_stops[-1][1]
    covered = sum(b - a for a, b in starts_stops)
    if covered != stop - start:
        raise ValueError(
            f"this process's devices hold non-contiguous rows {starts_stops} of the batch on mesh "
            f"{dict(mesh.shape)}; build the mesh with jax.make_mesh so each host's devices are adjacent"
        )
    return slice(start, stop)


def _global_rows(local_rows: int, mesh: Mesh, rules) -> int:
    # Global rows = local rows x (data-parallel blocks / blocks held by this process), probed on
    # a batch of one row per block.
    data_parallel = math.prod(mesh.shape[axis] for axis in _batch_axes(rules))
    probe = _batch_sharding(mesh, data_parallel, rules)
    local_blocks = {index[0].indices(data_parallel)[0]
                    for index in probe.addressable_devices_indices_map((data_parallel,)).values()}
    return local_rows * data_parallel // len(local_blocks)


def global_batch_from_local(local_arrays, mesh: Mesh, logical_axes=None, rules=None):
    """Builds global ``jax.Array``s from this process's rows (``jax.make_array_from_process_local_data``).

    Args:
      local_arrays: pytree of host arrays (numpy or a dataclass like ``TokenBatch``), each with
        this process's rows (``process_batch_rows``) on its ``batch`` dimension.
      mesh: the job's mesh (spanning all processes).
      logical_axes: None (dimension 0 is ``batch``, the rest replicated), one tuple of logical
        names applied to every leaf (padded with None to the leaf's rank), or a pytree of tuples
        matching ``local_arrays``. Dimensions other than ``batch`` must be whole on every process.
      rules: logical-axis rules (default ``sharding.DEFAULT_RULES``).
    """

    def build(local, axes):
        local = np.asarray(local)
        axes = ("batch",) if axes is None else tuple(axes)
        if len(axes) > local.ndim:
            raise ValueError(f"logical axes {axes} have more entries than the array's shape {local.shape}")
        axes = axes + (None,) * (local.ndim - len(axes))
        global_shape = list(local.shape)
        if "batch" in axes:
            dim = axes.index("batch")
            global_shape[dim] = _global_rows(local.shape[dim], mesh, rules)
            _batch_sharding(mesh, global_shape[dim], rules)  # clear error when it does not divide
        spec = sharding_lib.logical_to_spec(axes, global_shape, mesh, rules)
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local, tuple(global_shape))

    one_for_all = isinstance(logical_axes, tuple) and all(isinstance(a, (str, type(None))) for a in logical_axes)
    if logical_axes is None or one_for_all:
        return jax.tree.map(lambda x: build(x, logical_axes), local_arrays)
    # A tuple of names at a leaf position of `local_arrays` is that leaf's axes (prefix tree).
    return jax.tree.map(build, local_arrays, logical_axes)


_gather_calls = 0


def gather_objects(obj: Any, *, timeout_s: int = 600) -> list[Any]:
    """``[obj of process 0, obj of process 1, ...]`` on every process (any picklable object),
    through the coordination service's key-value store. Every process must call it, in the same
    order; a peer that never arrives raises after ``timeout_s``."""
    global _gather_calls
    if jax.process_count() == 1:
        return [obj]
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
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
    from jax._src import distributed as jax_distributed

    jax_distributed.global_state.client.wait_at_barrier(f"disrouter/barrier/{name}", timeout_s * 1000)


# ----------------------------------------------------------------------------------------------
# `python -m disrouter_jax.distributed --selftest`: a smoke test for launch scripts.


def selftest(expect_processes: int | None = None) -> int:
    """Initialises, sums a global array sharded over every device of the job and checks the
    value against numpy; returns a process exit code."""
    info = initialize()
    if expect_processes is not None and info.num_processes != expect_processes:
        print(f"selftest FAILED: {info.num_processes} processes, expected {expect_processes}", flush=True)
        return 1
    mesh = sharding_lib.make_mesh(sharding_lib.MeshConfig(data=1, fsdp=-1, tensor=1))
    rows = 2 * jax.device_count()
    full_rc = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    local_rc = full_rc[process_batch_rows(rows, mesh)]
    global_rc = global_batch_from_local(local_rc, mesh)
    total = float(sharding_lib.to_host(jax.jit(lambda x: (x * x).sum())(global_rc)))
    expected = float((full_rc * full_rc).sum())
    hosts = gather_objects(jax.process_index())
    ok = total == expected and hosts == list(range(jax.process_count()))
    print(
        f"selftest {'ok' if ok else 'FAILED'}: process {jax.process_index()} of {jax.process_count()} "
        f"({info.source}), {jax.local_device_count()} local / {jax.device_count()} global devices, "
        f"sum={total} expected={expected}",
        flush=True,
    )
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m disrouter_jax.distributed", description=__doc__.split("\n")[0])
    parser.add_argument("--selftest", action="store_true", help="initialise, run a cross-process sum, exit")
    parser.add_argument("--expect-processes", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.selftest:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO)
    return selftest(args.expect_processes)


if __name__ == "__main__":
    sys.exit(main())
