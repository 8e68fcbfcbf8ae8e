"""Train / eval / out-of-domain mixtures over several tasks, deterministic from a seed.

Each task's examples are shuffled with a generator seeded by (seed, task name), so a task's split
does not change when other tasks are added or removed. For every in-domain task the first
`eval_per_task` shuffled examples go to eval and the next `train_per_task` to train; held-out
tasks go, capped by `ood_per_task`, to the out-of-domain set only. Caps are maxima: a task with
fewer examples gives what it has (logged). The train list is then interleaved by one more shuffle
(seeded by `seed`); eval and ood keep task order, each task in its shuffled order.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from disrouter_jax.tasks.example import Example

logger = logging.getLogger(__name__)

Cap = int | Mapping[str, int] | None


@dataclasses.dataclass(frozen=True)
class Mixture:
    train: tuple[Example, ...]
    eval: tuple[Example, ...]
    ood: tuple[Example, ...]

    def counts(self) -> dict[str, dict[str, int]]:
        """{"train"|"eval"|"ood": {task: count}} for logs and reports."""
        return {
            part: dict(collections.Counter(e.task for e in getattr(self, part)))
            for part in ("train", "eval", "ood")
        }


def _cap_for(cap: Cap, task: str, what: str) -> int | None:
    value = cap.get(task) if isinstance(cap, Mapping) else cap
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"build_mixture: {what} for task {task!r} must be a non-negative int or None, got {value!r}")
    return value


def _task_rng(seed: int, task: str) -> np.random.Generator:
    # zlib.crc32 is stable across processes (unlike hash()).
    return np.random.default_rng([int(seed), zlib.crc32(task.encode("utf-8"))])


def _shuffled(examples: Sequence[Example], seed: int, task: str) -> list[Example]:
    order = _task_rng(seed, task).permutation(len(examples))
    return [examples[i] for i in order]


def build_mixture(
    examples_by_task: Mapping[str, Sequence[Example]],
    *,
    seed: int,
    train_per_task: Cap = None,
    eval_per_task: Cap = 0,
    ood_per_task: Cap = None,
    holdout_tasks: Sequence[str] = (),
) -> Mixture:
    """Split pre-loaded examples into train / eval / ood (see module docstring).

    Caps: an int for every task, a {task: int} mapping (missing task = no cap / 0 for eval), or
    None for "all". Raises ValueError for an unknown held-out task, an example filed under the
    wrong task, or a duplicated example id within a task (which would leak eval into train).
    """
    unknown = sorted(set(holdout_tasks) - set(examples_by_task))
    if unknown:
        raise ValueError(f"build_mixture: holdout_tasks {unknown} are not among the tasks {sorted(examples_by_task)}")
    train: list[Example] = []
    evals: list[Example] = []
    ood: list[Example] = []
    for task, examples in examples_by_task.items():
        ids = collections.Counter(e.id for e in examples)
        duplicated = [i for i, n in ids.items() if n > 1]
        if duplicated:
            raise ValueError(f"build_mixture: task {task!r} has duplicated example ids, e.g. {duplicated[:3]}")
        misfiled = [e.key for e in examples if e.task != task]
        if misfiled:
            raise ValueError(f"build_mixture: examples {misfiled[:3]} are filed under task {task!r}")
        shuffled = _shuffled(examples, seed, task)
        if task in holdout_tasks:
            cap = _cap_for(ood_per_task, task, "ood_per_task")
            ood.extend(shuffled if cap is None else shuffled[:cap])
            continue
        n_eval = _cap_for(eval_per_task, task, "eval_per_task") or 0
        if n_eval > len(shuffled):
            logger.warning("build_mixture: %s has %d examples, fewer than eval_per_task=%d", task, len(shuffled), n_eval)
        evals.extend(shuffled[:n_eval])
        rest = shuffled[n_eval:]
        cap = _cap_for(train_per_task, task, "train_per_task")
        if cap is not None and cap > len(rest):
            logger.info("build_mixture: %s gives %d train examples (cap %d)", task, len(rest), cap)
        train.extend(rest if cap is None else rest[:cap])
    train_order = np.random.default_rng(int(seed)).permutation(len(train))
    mixture = Mixture(train=tuple(train[i] for i in train_order), eval=tuple(evals), ood=tuple(ood))
    logger.info("build_mixture(seed=%d): %s", seed, mixture.counts())
    return mixture


def load_mixture(
    task_names: Sequence[str],
    *,
    seed: int,
    paths: Mapping[str, str | Path] | None = None,
    split: str | Mapping[str, str] | None = None,
    **caps: Any,
) -> Mixture:
    """`build_mixture` over tasks loaded with `load_task` (local where `paths` has the task, Hub
    otherwise); `split` is one split for all tasks, a {task: split} mapping, or None for defaults.
    `caps` are build_mixture's keyword arguments (train_per_task, eval_per_task, ood_per_task,
    holdout_tasks)."""
    from disrouter_jax.tasks.registry import load_task  # the registry imports every dataset module

    if len(set(task_names)) != len(task_names):
        raise ValueError(f"load_mixture: task_names has duplicates: {list(task_names)}")
    paths = paths or {}
    examples = {}
    for name in task_names:
        task_split = split.get(name) if isinstance(split, Mapping) else split
        examples[name] = load_task(name, paths.get(name), task_split)
    return build_mixture(examples, seed=seed, **caps)
