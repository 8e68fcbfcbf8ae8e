"""Where a run's rows come from: each task's files (a local folder, the toy pool's, or the Hub), the
split it trains and evaluates on, and the rows held out when those are one split.

The paper trains on each data set's train split and evaluates on its evaluation split (test, or
validation where the test split is unlabelled). ``data.train_splits`` / ``data.eval_splits`` list
splits in order of preference; the first one with local files is used (with the Hub: the first
one). ``data.eval_splits=()`` is each task's own evaluation split.

A local copy that has no train split (a sample of an evaluation split, as in ``../shared/data``)
can still be trained on, with ``data.train_splits=('train', 'validation', 'test')``. When a task
trains on the very files it is evaluated on, the rows that evaluation and self-assessment read (the
first ``max(data.eval_per_task, assess.per_task)`` of the seeded order every stage shares) are
held out of training, so no query is both trained and evaluated on.
"""

from __future__ import annotations

import functools
from pathlib import Path

from disrouter_jax import storage
from disrouter_jax.errors import SetupError
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.mixture import build_mixture
from disrouter_jax.tasks.registry import get_task, load_task

ROLES = ("train", "eval")


def toy_pool_dir(config, workdir: str | Path) -> Path:
    return storage.path(config.pool.dir or storage.join(workdir, "pool"))


def task_path(config, name: str, workdir: str | Path) -> Path | None:
    """Local files of task ``name``: ``data.dir/<name>`` (on an object store: its copy in the
    local cache, ``storage.local_dir``); for the toy pool, the directory the pool wrote its tasks
    to; otherwise ``None`` (the Hugging Face Hub)."""
    if config.data.dir:
        if storage.is_url(config.data.dir):
            return storage.local_dir(storage.join(config.data.dir, name))
        return Path(config.data.dir) / name
    if config.pool.toy:
        from disrouter_jax.toy import pool as toy_pool

        task_dirs = toy_pool.load_pool(toy_pool_dir(config, workdir)).task_dirs
        if name not in task_dirs:
            raise ValueError(f"task {name!r} is not a toy pool task; the pool has {sorted(task_dirs)}")
        return task_dirs[name]
    return None


def split_for(config, name: str, workdir: str | Path, role: str) -> str:
    """The split task ``name`` reads for ``role`` ("train" or "eval"): see the module docstring."""
    if role not in ROLES:
        raise ValueError(f"split_for: role must be one of {ROLES}, got {role!r}")
    task = get_task(name)
    candidates = tuple(config.data.train_splits if role == "train" else config.data.eval_splits)
    if not candidates:
        if role == "eval":
            return task.default_split
        raise SetupError("config.data.train_splits is empty: name the split(s) to train on, e.g. ('train',)")
    path = task_path(config, name, workdir)
    if path is None:
        return candidates[0]
    missing = []
    for split in candidates:
        try:
            task.local_files(path, split)
            return split
        except FileNotFoundError as err:
            missing.append(err)
    raise SetupError(f"{missing[0]}; config.data.{role}_splits={candidates}: none of them has files there")


def load_rows(config, name: str, workdir: str | Path, role: str) -> list[Example]:
    """Every row of task ``name``'s ``role`` split. Unparsable rows are skipped and logged by the
    loader (one warning naming the first); a split where no row parses stops the run."""
    split = split_for(config, name, workdir, role)
    path = task_path(config, name, workdir)
    examples = _load(name, None if path is None else str(path), split, _files_stamp(name, path, split))
    if not examples:
        raise SetupError(f"{name}: no row of split {split!r} in {path or 'the Hugging Face Hub'} parses "
                         "(the warning above names the first bad row)")
    return list(examples)


@functools.lru_cache(maxsize=64)
def _load(name: str, path: str | None, split: str, stamp: tuple) -> tuple[Example, ...]:
    # Every agent's training and self-assessment, the evaluation and the router fitting read the
    # same splits: parse each once per process (MMLU's auxiliary train split alone is 100k rows).
    # ``stamp`` (the files' paths, sizes and times) makes a rewritten file a new entry.
    return tuple(load_task(name, path=path, split=split))


def _files_stamp(name: str, path: Path | None, split: str) -> tuple:
    if path is None:
        return ()
    files = get_task(name).local_files(path, split)
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def trains_on_eval_rows(config, name: str, workdir: str | Path) -> bool:
    """Whether task ``name`` trains on the same files (or Hub split) it is evaluated on."""
    train, evaluation = split_for(config, name, workdir, "train"), split_for(config, name, workdir, "eval")
    path = task_path(config, name, workdir)
    if path is None:
        return train == evaluation
    task = get_task(name)
    return task.local_files(path, train) == task.local_files(path, evaluation)


def rows_held_out(config) -> int:
    """Rows per task that training leaves to evaluation and self-assessment on a shared split."""
    caps = [int(config.data.eval_per_task)] + ([int(config.assess.per_task)] if config.assess.enabled else [])
    if 0 in caps:
        raise SetupError("a task trains on its evaluation split (config.data.train_splits), so config.data."
                         "eval_per_task and config.assess.per_task must be > 0 to hold its evaluated rows out "
                         "(0 evaluates every row, leaving none to train on)")
    return max(caps)


def training_examples(config, workdir: str | Path) -> list[Example]:
    """The training queries: each configured task's training split (its evaluated rows held out
    where that is its evaluation split), ``data.train_per_task`` per task, shuffled."""
    by_task, held = {}, {}
    evaluated = set(config.data.eval_tasks) | set(config.data.out_of_domain)
    for name in config.data.train_tasks:
        by_task[name] = load_rows(config, name, workdir, "train")
        if name in evaluated and trains_on_eval_rows(config, name, workdir):
            held[name] = rows_held_out(config)
    mixture = build_mixture(by_task, seed=config.seed, train_per_task=config.data.train_per_task or None,
                            eval_per_task=held)
    return list(mixture.train)


def heldout_examples(config, workdir: str | Path) -> list[Example]:
    """Queries for self-assessment: each evaluation task's evaluation split, at most
    ``assess.per_task`` per task (0 = all), in the seeded order evaluation uses too."""
    by_task = {name: load_rows(config, name, workdir, "eval") for name in config.data.eval_tasks}
    cap = config.assess.per_task or None
    mixture = build_mixture(by_task, seed=config.seed, train_per_task=0,
                            eval_per_task={n: cap or len(e) for n, e in by_task.items()})
    return list(mixture.eval)
