"""Self-Awareness Training for every agent of the pool.

    python -m disrouter_jax.train --config configs/rl_alpha05.py[:toy] --workdir DIR \\
        [--config.rl.steps=100 ...] [--config.plan_only=True]

Everything the run writes goes under ``--workdir`` (default: ``workdir/<config name>``); running
the same command again resumes where it stopped. Before loading any weight the run checks its
inputs (``plan.check_before_run``); ``--config.plan_only=True`` prints the whole plan and exits
(status 2 when it found problems). A missing or unusable input ends the run with one line naming
it (``errors.py``), exit status 2.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from disrouter_jax.logs import configure_logging


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
    """Flags are defined only when run as a program (or on a caller's own ``FlagValues``)."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:toy]).", lock_config=True,
                                    flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "Directory for everything the run writes.", flag_values=flag_values)
    flags.mark_flag_as_required("config", flag_values=flag_values)
    return flag_values


def default_workdir(config_path: str, config_string: str | None) -> Path:
    name = Path(config_path.split(":")[0]).stem
    return Path("workdir") / (f"{name}_{config_string}" if config_string else name)


def main(argv):
    del argv
    from disrouter_jax import runtime

    runtime.keep_freed_memory()
    run_cli(flags.FLAGS)


def run_cli(flag_values: flags.FlagValues):
    """The command from parsed flags: the plan, or the training; returns the trained agents' specs."""
    from disrouter_jax import distributed, errors, pipeline, plan, storage

    distributed.initialize()
    config = flag_values.config
    config_arg = flag_values["config"].config_filename
    workdir = storage.path(flag_values.workdir or default_workdir(config_arg, config_arg.partition(":")[2] or None))
    configure_logging()
    with errors.reported_as_one_line():
        if config.plan_only:
            return plan.print_plan(config, workdir, config_arg)
        if not storage.is_url(workdir):
            workdir.mkdir(parents=True, exist_ok=True)
        specs = pipeline.ensure_pool(config, workdir)
        plan.check_before_run(config, workdir, specs)
        trained = pipeline.ensure_trained_pool(config, workdir, mesh=pipeline.make_mesh_from_config(config))
    for spec in trained:
        print(f"{spec.name:24s} cost={spec.cost:.2f}  {spec.path}")
    return trained


if __name__ == "__main__":
    define_flags()
    app.run(main)
