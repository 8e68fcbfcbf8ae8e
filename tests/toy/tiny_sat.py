"""The toy evaluation config with Self-Awareness Training shrunk to a few steps on the reduced pool:
for tests that run the whole pipeline and check plumbing, not figures."""

import importlib.util
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def tiny_sat_config(pool_dir, *, train_per_task: int, sft_steps: int, rl_steps: int):
    spec = importlib.util.spec_from_file_location("eval_cascade", PROJECT_ROOT / "configs" / "eval_cascade.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("toy")
    config.progress = False
    config.pool.dir = str(pool_dir)
    config.pool.reduced = True
    config.data.train_per_task = train_per_task
    config.sft.steps = sft_steps
    config.sft.batch_size = 8
    config.sft.warmup_steps = 1
    # One length bucket (the toy setup's longest): one SFT and one RL step program per agent.
    config.sft.length_buckets = (max(config.sft.length_buckets),)
    config.rl.steps = rl_steps
    config.rl.prompts_per_step = 4
    config.rl.warmup_steps = 1
    config.assess.enabled = False
    return config
