"""Multi-process (multi-host) runs on JAX's multi-controller runtime.

Every host runs the same program. After :func:`initialize`, ``jax.devices()`` lists the devices of
the whole job, a mesh built from them spans all hosts, and a jitted step on that mesh runs as one
SPMD program whose collectives cross hosts (ICI/DCN on TPU, NCCL on GPU, gloo on CPU).

One path for ``train`` and ``evaluate`` — call ``initialize()`` first thing, before any JAX call:

- one host, nothing configured: a no-op (``jax.distributed`` is never started);
- a cluster JAX recognises (Cloud TPU pod slice, SLURM, Open MPI, ...): auto-detected by JAX;
- anything else: explicit coordinator / process count / process id, as arguments or through the
  environment (``DISROUTER_COORDINATOR``, ``DISROUTER_NUM_PROCESSES``, ``DISROUTER_PROCESS_ID``;
  see ``settings.ENV_VARS``), which is how ``launch/local.sh`` starts N processes on one machine.

A dead peer must not leave the others hanging: the coordination service declares a process dead
after ``heartbeat_timeout_s`` without heartbeats and every surviving process then terminates with
an error naming the dead task. Collectives usually fail sooner (the peer's sockets close).

The package, one job per module:

- here: starting the job (:func:`initialize`, :func:`shutdown`, :func:`is_coordinator`);
- ``settings``: what to start, from arguments, ``DISROUTER_*`` variables and cluster detection;
- ``work``: splitting work items between processes and bringing Python results back together
  (``process_shard``, ``map_over_processes``, ``gather_objects``, ``barrier``, ``local_mesh``);
- ``jax_internals``: the only use of JAX's private modules, and why;
- ``selftest`` (``python -m disrouter_jax.distributed --selftest``): a smoke test for launch/.

Data needs nothing from here: every process builds the whole global batch and the train step
places it (``training.state.shard_batch``); each device keeps only its rows.
"""

from __future__ import annotations

import dataclasses
import logging

import jax

from disrouter_jax.distributed import jax_internals
from disrouter_jax.distributed import settings as settings_lib

logger = logging.getLogger(__name__)


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


def initialize(settings: settings_lib.LaunchSettings | None = None, *, cpu_collectives: str = "gloo") -> ProcessInfo:
    """Starts ``jax.distributed`` when the run spans several processes; a no-op otherwise.

    Must run before anything touches a JAX backend (``jax.devices()``, any computation). Safe to
    call twice (the second call reports the running setup). ``settings``: what to start; by
    default ``settings.resolve_settings()``, i.e. the ``DISROUTER_*`` environment variables
    (``cluster``: "auto", "none" or a JAX cluster name).
    """
    if jax.distributed.is_initialized():
        state = jax_internals.coordination_state()
        return ProcessInfo(state.process_id, state.num_processes, state.coordinator_address, "already")
    if settings is None:
        settings = settings_lib.resolve_settings()
    needs_detection = not settings.explicit and settings.cluster != settings_lib.CLUSTER_NONE
    source = settings_lib.choose_source(settings, settings_lib.detect_cluster() if needs_detection else None)
    if source == "single":
        return ProcessInfo(0, 1, None, "single")

    local_ids = settings.local_device_ids
    if local_ids is None and source == "slurm":
        local_ids = settings_lib.slurm_local_device_ids()
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
    state = jax_internals.coordination_state()
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
