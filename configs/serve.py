"""The cascade served over HTTP: an OpenAI-compatible chat-completions server.

    python -m disrouter_jax.serve --config configs/serve.py[:toy] --workdir DIR [--port N]

The pool is the one ``evaluate`` would use: with ``serve.train_agents`` (default) the trained
agents of the workdir, trained first if absent (for ``:toy`` the toy pool is built first too);
otherwise ``pool.agents`` as they are. Every field is overridable on the command line, e.g.
``--config.serve.max_batch_size=32 --config.serve.batch_window_ms=5``.
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(config_string=None):
    config = common.get_base_config(common.parse_setup(config_string))
    toy = config.setup == "toy"
    # Training (when the workdir has no trained agents yet): one model for every scenario, as
    # eval_cascade.py trains it, so a served workdir and an evaluated one are the same agents.
    config.alphas = (0.2, 0.5, 0.8)
    config.progress = False

    s = config.serve = ml_collections.ConfigDict()
    s.train_agents = True  # serve <workdir>/agents/*/final (trained first if absent); False: pool as is
    # Placement, as in eval_cascade.py: "shared" (every agent on config.mesh), "per_agent" (one
    # disjoint sub-mesh each), "pool" (pool.agents' own devices); agent_devices overrides them.
    s.placement = "shared"
    s.agent_devices = ()
    s.early_refusal = True

    # Listening: loopback by default; put a reverse proxy in front for anything else.
    s.host = "127.0.0.1"
    s.port = 8000
    # Dynamic batching: a batch closes when no request came for batch_window_ms, at most
    # max_batch_wait_ms after its first, or at max_batch_size rows; each next stage runs the rows
    # refused by the stage before as one batch (a pipeline: one worker per agent).
    s.max_batch_size = 64
    s.batch_window_ms = 2.0
    s.max_batch_wait_ms = 20.0
    s.pipeline = True
    s.max_queue = 1024  # admitted, unfinished requests; beyond: 429 with Retry-After
    s.retry_after_s = 1
    s.request_timeout_s = 60.0  # per-request deadline: 504 after it
    s.max_new_tokens = 24 if toy else 512  # default and largest max_tokens, at every stage
    s.default_temperature = 0.0  # greedy, as the cascade is trained and evaluated
    s.default_alpha = 0.5  # model="disrouter" without "alpha"
    s.cost_mode = "final"
    # Prompt-length buckets (longer prompts: multiples of the largest, compiled on first use):
    # warm-up "all" compiles every batch bucket x prompt bucket of every agent, greedy, before
    # /health is ready ("smallest" or "none": less), each agent from its shortest prompt up. The
    # toy questions: 16-31 tokens plain (the last agent), 128-144 with a scenario instruction.
    s.prompt_buckets = (32, 160) if toy else (512, 2048)
    s.warmup = "all"
    s.warmup_streaming = True  # the streaming variants too (stream=true requests)
    s.stage_delay_s = 0.0  # drills only: a pause before each stage
    s.stream_step_delay_s = 0.0  # drills only: a pause after each decode step of a streamed call
    return config
