"""Self-Awareness Training for every agent of the pool.

    python -m disrouter_jax.train --config configs/rl_alpha05.py[:toy] --workdir DIR \
        [--config.rl.steps=100 ...]

Everything the run writes goes under ``--workdir`` (default: ``workdir/<config name>``); running
the same command again resumes where it stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from absl import app, flags

from disrouter_jax.logs import configure_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:toy]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")


def default_workdir(config_path: str, config_string: str | None) -> Path:
    name = Path(config_path.split(":")[0]).stem
    return Path("workdir") / (f"{name}_{config_string}" if config_string else name)


def main(argv):
    del argv
    from disrouter_jax import distributed, pipeline, runtime

    runtime.keep_freed_memory()

    distributed.initialize()
    config = _CONFIG.value
    config_arg = flags.FLAGS["config"].config_filename
    workdir = Path(_WORKDIR.value or default_workdir(config_arg, config_arg.partition(":")[2] or None))
    workdir.mkdir(parents=True, exist_ok=True)
    configure_logging()
    mesh = pipeline.make_mesh_from_config(config)
    trained = pipeline.ensure_trained_pool(config, workdir, mesh=mesh)
    for spec in trained:
        print(f"{spec.name:24s} cost={spec.cost:.2f}  {spec.path}")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
