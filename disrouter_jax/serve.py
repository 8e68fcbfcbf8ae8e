"""Serve the trained cascade: an OpenAI-compatible chat-completions server.

    python -m disrouter_jax.serve --config configs/serve.py[:toy] --workdir DIR [--port N]

Loads the agents of ``--workdir`` exactly as ``evaluate`` does (for ``:toy`` the pool is built and
trained first when absent), places them on the configured mesh / sub-meshes, starts the batcher
and serves; ``GET /health`` turns ready once the compiled programs are warm. SIGTERM (or Ctrl-C)
stops accepting, finishes the requests in flight, then exits. See ``cascade/serving``.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import uvicorn
from absl import app, flags
from ml_collections import config_flags

from disrouter_jax import errors, runtime
from disrouter_jax.logs import configure_logging

logger = logging.getLogger(__name__)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
    config_flags.DEFINE_config_file("config", None, "Config file (configs/serve.py[:toy]).",
                                    lock_config=True, flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "The workdir whose agents are served (built/trained there if absent).",
                        flag_values=flag_values)
    flags.DEFINE_integer("port", None, "Port to listen on (default: config.serve.port).", flag_values=flag_values)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)
    return flag_values


class DrainingServer(uvicorn.Server):
    """Exits with status 0 after a SIGTERM drain: uvicorn re-raises the signal once it has shut
    down (status -15), which process managers read as a crash rather than a clean stop."""

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            self._captured_signals.remove(sig)


def load_stages(config, workdir: Path, serve_cfg):
    """The pool of ``workdir`` as cascade stages, placed as ``config.serve`` says."""
    import jax

    from disrouter_jax import pipeline
    from disrouter_jax.agents import load_agent
    from disrouter_jax.cascade.placement import place_agents
    from disrouter_jax.cascade.serving.stage import AgentStage, stage_buckets

    mesh = pipeline.make_mesh_from_config(config)
    if config.serve.train_agents:
        specs = pipeline.ensure_trained_pool(config, workdir, mesh=mesh)
    else:
        specs = pipeline.ensure_pool(config, workdir)
    specs = place_agents(specs, config.serve, len(jax.devices()))
    agents = [load_agent(s, dtype=config.dtype, param_dtype=config.param_dtype, mesh=mesh) for s in specs]
    last = len(agents) - 1
    return [AgentStage(agent, last=k == last, max_batch_size=serve_cfg.max_batch_size,
                       buckets=stage_buckets(serve_cfg.prompt_buckets, serve_cfg.max_new_tokens),
                       early_refusal=config.serve.early_refusal, stream_step_delay_s=serve_cfg.stream_step_delay_s)
            for k, agent in enumerate(agents)]


def run_cli(flag_values: flags.FlagValues) -> None:
    import dataclasses

    from disrouter_jax.cascade.serving.app import create_app
    from disrouter_jax.cascade.serving.config import ServeConfig
    from disrouter_jax.cascade.serving.service import CascadeService

    config = flag_values.config
    serve_cfg = ServeConfig.from_mapping(config.serve)
    if flag_values.port is not None:
        serve_cfg = dataclasses.replace(serve_cfg, port=flag_values.port)
    from disrouter_jax import storage

    workdir = storage.path(flag_values.workdir)
    if not storage.is_url(workdir):
        workdir.mkdir(parents=True, exist_ok=True)
    with errors.reported_as_one_line():  # a missing agent or tokenizer: one line, exit 2
        stages = load_stages(config, workdir, serve_cfg)
    logger.info("serving %s on http://%s:%d", [s.name for s in stages], serve_cfg.host, serve_cfg.port)
    service = CascadeService(stages, serve_cfg)
    # Uvicorn owns SIGTERM / SIGINT: it stops accepting, waits for in-flight requests, then runs
    # the app's shutdown (the batcher drains).
    server = DrainingServer(uvicorn.Config(
        create_app(service), host=serve_cfg.host, port=serve_cfg.port, log_level="info", access_log=False,
        timeout_graceful_shutdown=serve_cfg.request_timeout_s + 5))
    server.run()


def main(argv) -> None:
    del argv
    runtime.keep_freed_memory()
    configure_logging()
    run_cli(flags.FLAGS)


if __name__ == "__main__":
    define_flags()
    app.run(main)
