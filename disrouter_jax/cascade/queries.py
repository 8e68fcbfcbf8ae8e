"""The evaluation's queries and the disjoint ones central routers are fitted on."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from disrouter_jax import task_data
from disrouter_jax.cascade import engine
from disrouter_jax.cascade.log import IN_DOMAIN, OUT_OF_DOMAIN
from disrouter_jax.tasks.mixture import build_mixture

ROUTER_TRAIN_SOURCES = ("train", "split")


def evaluation_queries(config, workdir: Path) -> list[engine.Query]:
    """Each evaluation task's evaluation split (``task_data.split_for``), ``data.eval_per_task`` per
    task (0 = all), shuffled from the seed; ``data.out_of_domain`` tasks form the out-of-domain group."""
    ood = list(config.data.out_of_domain)
    names = list(dict.fromkeys(list(config.data.eval_tasks) + ood))
    by_task = {name: task_data.load_rows(config, name, workdir, "eval") for name in names}
    cap = config.data.eval_per_task or None
    mixture = build_mixture(by_task, seed=config.seed, train_per_task=0,
                            eval_per_task={n: cap or len(e) for n, e in by_task.items()},
                            ood_per_task=cap, holdout_tasks=[n for n in names if n in ood])
    return ([engine.Query(e, IN_DOMAIN) for e in mixture.eval] + [engine.Query(e, OUT_OF_DOMAIN) for e in mixture.ood])


def training_queries(config, workdir: Path, per_task: int) -> list[engine.Query]:
    """Up to ``per_task`` queries of each training task's training split (seeded shuffle)."""
    by_task = {name: task_data.load_rows(config, name, workdir, "train") for name in config.data.train_tasks}
    mixture = build_mixture(by_task, seed=config.seed + 1, train_per_task=per_task or None, eval_per_task=0)
    return [engine.Query(e, IN_DOMAIN) for e in mixture.train]


def select_queries(config, workdir: Path) -> tuple[list[engine.Query], list[engine.Query]]:
    """(evaluation queries, router-fitting queries); disjoint by construction."""
    e = config.eval
    if e.router_train not in ROUTER_TRAIN_SOURCES:
        raise ValueError(f"config.eval.router_train must be one of {ROUTER_TRAIN_SOURCES}, got {e.router_train!r}")
    queries = evaluation_queries(config, workdir)
    if not queries:
        raise ValueError("no evaluation queries: check config.data.eval_tasks / eval_per_task")
    if not e.routers:
        return queries, []
    if e.router_train == "split":
        if not 0.0 < e.router_train_fraction < 1.0:
            raise ValueError(f"config.eval.router_train_fraction must lie in (0, 1), got {e.router_train_fraction}")
        order = np.random.default_rng(e.seed).permutation(len(queries))
        n_fit = int(round(e.router_train_fraction * len(queries)))
        fit = set(order[:n_fit].tolist())
        return [q for i, q in enumerate(queries) if i not in fit], [q for i, q in enumerate(queries) if i in fit]
    eval_keys = {q.key for q in queries}
    fit = [q for q in training_queries(config, workdir, e.router_train_per_task) if q.key not in eval_keys]
    return queries, fit


def keys_digest(queries: Sequence[engine.Query]) -> str:
    """A short fingerprint of which queries, in which order (the workdir manifest records it)."""
    return hashlib.sha256("\n".join(f"{d}\t{q}" for d, q in (x.key for x in queries)).encode()).hexdigest()[:16]
