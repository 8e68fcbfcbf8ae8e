"""Cascade evaluation on a pool that mixes model families: Qwen2.5, Llama 3.x and Qwen3.

    python -m disrouter_jax.evaluate --config configs/eval_mixed_pool.py --workdir DIR

Everything else is ``eval_cascade.py``'s paper setup (training first, then every baseline). Each
agent is loaded by its ``config.json`` (the family) and prompted through its own tokenizer and
chat template; its refusal is detected with its own tokenizer, and the routing log and report
name each agent's family. Qwen3 appears as its non-thinking instruct release (the thinking
models open every reply with a ``<think>`` block). Llama repositories are gated on the Hub: set
``--config.pool.agents`` (or edit ``MIXED_POOL``) to local copies where needed. Only the
``paper`` setup: a mixed toy pool belongs to the toy pool's own configuration.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import eval_cascade  # noqa: E402

# Cascade order = cost order = size order, across families.
MIXED_POOL = (
    {"name": "Qwen2.5-0.5B-Instruct", "path": "Qwen/Qwen2.5-0.5B-Instruct", "cost": 0.1},
    {"name": "Llama-3.2-1B-Instruct", "path": "meta-llama/Llama-3.2-1B-Instruct", "cost": 0.3},
    {"name": "Qwen3-4B-Instruct-2507", "path": "Qwen/Qwen3-4B-Instruct-2507", "cost": 0.5},
    {"name": "Llama-3.1-8B-Instruct", "path": "meta-llama/Llama-3.1-8B-Instruct", "cost": 0.7},
    {"name": "Qwen2.5-14B-Instruct", "path": "Qwen/Qwen2.5-14B-Instruct", "cost": 0.9},
)


def get_config(config_string=None):
    setup = common.parse_setup(config_string)
    if setup != "paper":
        raise ValueError(f"configs/eval_mixed_pool.py: setup {setup!r} is not offered (only 'paper')")
    config = eval_cascade.get_config(setup)
    config.pool.agents = [dict(agent) for agent in MIXED_POOL]
    return config
