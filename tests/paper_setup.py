"""The paper configs with the few overrides a CI run of them takes, as config objects (in-process
tests) and as the command-line flags a user would type (CLI tests).

What is overridden, and why: ``pool.agents`` (tiny local agents, tests/qwen25_pool.py), ``data.dir``
(the shared sample of the ten data sets), the splits (the sample mostly holds evaluation splits, so
training reads the first split present, its evaluated rows held out: disrouter_jax/task_data.py)
and counts: rows, samples, steps, batch sizes, lengths. Nothing of the recipe itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT, child_xla_flags, load_config_module

SAMPLE_SPLITS = {
    "data.train_splits": ("train", "validation", "test"),
    "data.eval_splits": ("test", "validation"),
}
# Small counts. Generation batches of 8 rows everywhere (4 prompts x 2 samples when sampling) and 8
# new tokens, one SFT/RL length bucket: the fewest distinct programs to compile.
SMALL_COUNTS = {
    "data.train_per_task": 2, "data.eval_per_task": 1,
    "label.num_samples": 2, "label.max_new_tokens": 8, "label.batch_size": 4,
    "sft.steps": 1, "sft.batch_size": 4, "sft.warmup_steps": 0, "sft.length_buckets": (1024,),
    "rl.steps": 1, "rl.prompts_per_step": 4, "rl.group_size": 2, "rl.max_new_tokens": 8, "rl.warmup_steps": 0,
    "assess.per_task": 1, "assess.max_new_tokens": 8, "assess.batch_size": 8,
    "progress": False,
}
EVAL_COUNTS = {"eval.max_new_tokens": 8, "eval.batch_size": 8, "eval.router_train_per_task": 2,
               "eval.router_steps": 10, "eval.feature_batch_size": 8}


def overrides(pool: list[dict], data_dir: str | Path, *, evaluation: bool = False, extra: dict | None = None) -> dict:
    """Every override of a CI run of the paper setup, as dotted config paths -> values."""
    out = {"pool.agents": tuple(dict(a) for a in pool), "data.dir": str(data_dir), **SAMPLE_SPLITS, **SMALL_COUNTS}
    if evaluation:
        out.update(EVAL_COUNTS)
    return out | dict(extra or {})


def as_flags(values: dict) -> list[str]:
    """``--config.<path>=<value>`` as a shell would pass them (tuples as Python literals)."""
    return [f"--config.{path}={value!r}" if isinstance(value, tuple) else f"--config.{path}={value}"
            for path, value in values.items()]


def paper_config(config_file: str, values: dict):
    """``configs/<config_file>`` (the paper setup) with ``values`` applied."""
    config = load_config_module(config_file).get_config()
    load_config_module("common.py").apply_overlay(config, values)
    return config


COMMANDS = (("train", "configs/rl_alpha05.py"), ("evaluate", "configs/eval_cascade.py"))


def run_commands(pool: list[dict], root: Path, run) -> tuple[Path, dict[str, tuple[int, str, str]]]:
    """``python -m disrouter_jax.train`` then ``python -m disrouter_jax.evaluate`` on the paper
    configs with `overrides`, as a user types them, into ``root / "work"``: the workdir and per
    command its exit code, stdout and stderr (none after a failed one). ``run(args, stdout, stderr,
    **popen) -> exit code`` starts each (the session's `Background.run`, tests/conftest.py).

    Each command is its own process on one CPU device (a user's host; the session's eight
    simulated devices are for the mesh tests); they share a persistent compilation cache, so the
    evaluation reuses what training compiled."""
    workdir = root / "work"
    env = dict(os.environ, XLA_FLAGS=child_xla_flags(), HF_HUB_OFFLINE="1", JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    done = {}
    for command, config_file in COMMANDS:
        values = overrides(pool, "../shared/data", evaluation=command == "evaluate")
        out, err = root / f"{command}.out", root / f"{command}.err"
        code = run([sys.executable, "-m", f"disrouter_jax.{command}", f"--config={config_file}", f"--workdir={workdir}",
                    *as_flags(values)], out, err, cwd=PROJECT_ROOT, env=env)
        done[command] = (code, out.read_text(), err.read_text())
        if code != 0:
            break
    return workdir, done
