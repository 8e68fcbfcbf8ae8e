"""Launch settings: what a run asks ``initialize`` to do, from arguments and the environment.

Pure (no JAX runtime is started here): the ``DISROUTER_*`` environment variables
(:data:`ENV_VARS`), their merge with explicit arguments (:func:`resolve_settings`), cluster
detection (:func:`detect_cluster`) and the choice between one process, an explicit job and a
cluster JAX recognises (:func:`choose_source`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence

from disrouter_jax.distributed import jax_internals

logger = logging.getLogger(__name__)

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
    pick, or None when none is present (JAX's own detectors)."""
    for env in jax_internals.cluster_detectors():
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
    missing = sorted(set(given) - set(partial))
    if settings.cluster == CLUSTER_NONE:
        if partial:
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
            raise ValueError(
                f"multi-process settings {partial} given but {missing} missing and no cluster "
                f"(SLURM, Open MPI, Cloud TPU, ...) detected to fill them in"
            )
        return "single"
    name, count = detected
    if count == 1 and settings.num_processes in (None, 1):
        return "single"
    return name
