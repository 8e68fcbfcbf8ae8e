"""The one training loop every stage runs: resume, step, guard, log, checkpoint, stop on signal.

A stage supplies ``make_batch(step, state) -> (batch, host_metrics)``, a pure function of the step
index (and, for RL, of the current policy), so the data position of a checkpoint is its step and
a resumed run replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from tqdm.auto import tqdm

from disrouter_jax import storage
from disrouter_jax.training.checkpoint import PreemptionGuard, TrainCheckpointer, check_finite
from disrouter_jax.training.metrics import MetricsWriter
from disrouter_jax.training.state import TrainState

logger = logging.getLogger(__name__)
DONE_FILE = "DONE"


class Preempted(RuntimeError):
    """The run stopped on a signal after writing a checkpoint; run again to resume."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    total_steps: int
    checkpoint_every: int = 50
    max_to_keep: int = 2
    log_every: int = 10
    progress: bool = True
    async_checkpoints: bool = True


def is_done(workdir: str | Path) -> bool:
    return (storage.path(workdir) / DONE_FILE).is_file()


def run_loop(
    name: str,
    state: TrainState,
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict]],
    make_batch: Callable[[int, TrainState], tuple[Any, dict]],
    workdir: str | Path,
    cfg: LoopConfig,
) -> TrainState:
    """Runs ``cfg.total_steps`` updates under ``workdir`` (checkpoints/, metrics.jsonl, DONE).

    Resumes from the latest checkpoint when there is one. On SIGTERM a checkpoint of the last
    finished step is written and :class:`Preempted` raised. A non-finite loss raises
    ``NonFiniteLossError`` (the train step already refused to apply that update); checkpoints
    written before it are kept.
    """
    workdir = storage.path(workdir)
    ckpt = TrainCheckpointer(
        workdir / "checkpoints",
        max_to_keep=cfg.max_to_keep,
        save_interval_steps=cfg.checkpoint_every,
        async_save=cfg.async_checkpoints,
    )
    try:
        restored = ckpt.maybe_restore(state)
        start = 0
        if restored is not None:
            state, start = restored.state, restored.step
            logger.info("%s: resuming at step %d from %s", name, start, ckpt.directory)
        writer = MetricsWriter(workdir, resume_step=start if restored is not None else None)
        bar = tqdm(total=cfg.total_steps, initial=start, desc=name, unit="step",
                   disable=not cfg.progress or jax.process_index() != 0, dynamic_ncols=True)
        with writer, bar, PreemptionGuard() as guard:
            for step in range(start, cfg.total_steps):
                t0 = time.perf_counter()
                batch, host_metrics = make_batch(step, state)
                state, metrics = step_fn(state, batch)
                loss = check_finite(step + 1, metrics)
                seconds = time.perf_counter() - t0
                done = step + 1
                if done % cfg.log_every == 0 or done == cfg.total_steps or done == start + 1:
                    tokens = float(jax.device_get(metrics.get("num_tokens", 0.0)))
                    record = {**jax.device_get(metrics), **host_metrics,
                              "step_seconds": seconds, "tokens_per_second": tokens / max(seconds, 1e-9)}
                    writer.write(done, record)
                    bar.set_postfix(loss=f"{loss:.4f}")
                bar.update(1)
                ckpt.save(done, state, data_position=done)
                if ckpt.should_stop(done, guard):
                    ckpt.save(done, state, data_position=done, force=True)
                    ckpt.wait_until_finished()
                    raise Preempted(f"{name}: stopped by signal after step {done}; checkpoint saved in "
                                    f"{ckpt.directory}. Run the same command again to resume.")
        if ckpt.latest_step() != cfg.total_steps:
            ckpt.save(cfg.total_steps, state, data_position=cfg.total_steps, force=True)
        ckpt.wait_until_finished()
    finally:
        ckpt.close()
    if storage.is_writer():
        storage.write_text(workdir / DONE_FILE, f"{cfg.total_steps}\n")
    storage.barrier(f"done:{workdir}")
    return state
