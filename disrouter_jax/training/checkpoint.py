"""Checkpoints (Orbax), pre-emption handling and the non-finite-loss guard.

A checkpoint of step ``s`` holds two items:

- ``state``: the trained ``params`` and the optimizer state (Adam moments, counters) as arrays,
  written with their shardings and restored straight onto the shardings of a template
  ``TrainState`` (``create_train_state`` with the same model / optimizer / mesh).
- ``extra`` (JSON): ``step``, ``data_position`` (whatever the loop needs to resume its data
  stream), ``rng_key`` (a JAX PRNG key, typed or raw) and a free-form ``extra`` dict.

``TrainState.frozen`` (the base weights under LoRA) is *not* saved: it never changes and is
rebuilt from the same base checkpoint; a LoRA checkpoint holds only adapters and their optimizer
state. Saving is asynchronous by default: ``save`` returns once the arrays are copied off the
devices (so the next, donating train step is safe), and files are written in the background;
``wait_until_finished`` / ``close`` block until they are on disk.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from disrouter_jax import storage
from disrouter_jax.training.state import TrainState


class NonFiniteLossError(FloatingPointError):
    """The loss of a step was NaN or infinite; the run must stop without saving that state."""

    def __init__(self, step: int, loss: float):
        self.step = step
        self.loss = loss
        super().__init__(
            f"non-finite loss {loss} at step {step}: stopping. The update of this step was not applied "
            "and nothing was saved after it; the last good checkpoint is kept."
        )


def check_finite(step: int, loss_or_metrics) -> float:
    """Returns the loss as a float, or raises :class:`NonFiniteLossError`.

    Accepts a scalar or a metrics dict with a ``"loss"`` entry (a host sync when on device). Call it
    before saving the step's state.
    """
    loss = loss_or_metrics["loss"] if isinstance(loss_or_metrics, dict) else loss_or_metrics
    loss = float(np.asarray(jax.device_get(loss)))
    if not math.isfinite(loss):
        raise NonFiniteLossError(step, loss)
    return loss


class PreemptionGuard:
    """Context manager that turns SIGTERM (pre-emption) into a stop request.

    The handler only sets a flag; the loop checks ``guard.stop_requested`` at each step boundary,
    writes a checkpoint (``save(..., force=True)`` + ``wait_until_finished``) and returns. Previous
    handlers are restored on exit. Must be entered from the main thread (Python's rule for signal
    handlers).
    """

    def __init__(self, signals=(signal.SIGTERM,)):
        self.signals = tuple(signals)
        self._event = threading.Event()
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        self.received = signum
        self._event.set()

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be entered from the main thread (signal handlers)")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def stop_requested(self) -> bool:
        return self._event.is_set()

    def request_stop(self) -> None:
        self._event.set()


def _stringify_keys(tree):
    if isinstance(tree, dict):
        return {str(k): _stringify_keys(v) for k, v in tree.items()}
    return tree


def _pure_arrays(state: TrainState) -> dict[str, Any]:
    return {
        "params": _stringify_keys(nnx.to_pure_dict(state.params)),
        "opt_state": _stringify_keys(nnx.to_pure_dict(state.opt_state)),
    }


def _abstract(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


def _fill(template: nnx.State, pure: dict) -> nnx.State:
    # Copy first: replace_by_pure_dict writes into the Variables it is given.
    state = jax.tree.map(lambda x: x, template)
    nnx.replace_by_pure_dict(state, pure)
    return state


def key_to_json(key) -> dict | None:
    if key is None:
        return None
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return {"typed": True, "impl": str(jax.random.key_impl(key)), "data": np.asarray(jax.random.key_data(key)).tolist()}
    return {"typed": False, "data": np.asarray(key).tolist(), "dtype": str(np.asarray(key).dtype)}


def key_from_json(data: dict | None):
    if data is None:
        return None
    if data["typed"]:
        return jax.random.wrap_key_data(np.asarray(data["data"], np.uint32), impl=data["impl"])
    return jax.numpy.asarray(np.asarray(data["data"], dtype=data["dtype"]))


@dataclasses.dataclass(frozen=True)
class Restored:
    state: TrainState
    step: int
    data_position: Any
    rng_key: Any
    extra: dict


class TrainCheckpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` for ``TrainState`` + resume metadata.

    Args:
      directory: checkpoint root (e.g. ``workdir / "checkpoints"``), created if missing.
      max_to_keep: newest checkpoints kept (None = all).
      save_interval_steps: ``save`` without ``force`` writes only every this many steps.
      async_save: write files in a background thread.
    """

    def __init__(self, directory, *, max_to_keep: int | None = 3, save_interval_steps: int = 1, async_save: bool = True):
        # Orbax speaks gs:// itself (epath + TensorStore's GCS driver); a local path is made absolute.
        self.directory = storage.path(directory)
        if not storage.is_url(self.directory):
            self.directory = self.directory.absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "extra"))

    def save(
        self,
        step: int,
        state: TrainState,
        *,
        data_position: Any = None,
        rng_key=None,
        extra: dict | None = None,
        force: bool = False,
    ) -> bool:
        """Saves when the interval says so (or ``force``); returns whether a save started."""
        meta = {"step": int(step), "data_position": data_position, "rng_key": key_to_json(rng_key), "extra": extra or {}}
        args = ocp.args.Composite(state=ocp.args.StandardSave(_pure_arrays(state)), extra=ocp.args.JsonSave(meta))
        return self._manager.save(int(step), args=args, force=force)

    def should_stop(self, step: int, guard: PreemptionGuard | None) -> bool:
        """A stop was requested locally (SIGTERM) or, on a multi-process run with JAX's
        preemption service, every process reached the preemption sync point."""
        return bool((guard is not None and guard.stop_requested) or self._manager.reached_preemption(step))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, template: TrainState, step: int | None = None) -> Restored:
        """Restores ``step`` (default: the latest) onto the shapes, dtypes and shardings of
        ``template`` (a freshly created state of the same run). ``template.frozen`` is kept."""
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(_abstract, _pure_arrays(template))
        restored = self._manager.restore(
            int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore())
        )
        arrays, meta = restored["state"], restored["extra"]
        state = template.replace(
            params=_fill(template.params, arrays["params"]), opt_state=_fill(template.opt_state, arrays["opt_state"])
        )
        return Restored(state, int(meta["step"]), meta.get("data_position"), key_from_json(meta.get("rng_key")), meta.get("extra") or {})

    def maybe_restore(self, template: TrainState) -> Restored | None:
        """The latest checkpoint, or None when the directory has none (a fresh run)."""
        return None if self.latest_step() is None else self.restore(template)

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "TrainCheckpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
