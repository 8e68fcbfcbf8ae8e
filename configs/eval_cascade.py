"""Cascade evaluation: DiSRouter vs baselines vs oracle at α = 0.2 / 0.5 / 0.8.

    python -m disrouter_jax.evaluate --config configs/eval_cascade.py[:toy] --workdir DIR

The agents are trained first (or reused) exactly as ``rl_mixed.py`` would (one model for every
scenario), unless ``eval.train_agents=False``. Every ``eval`` field is overridable on the command
line, e.g. ``--config.eval.placement=per_agent --config.eval.micro_batch_size=32``.
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(config_string=None):
    config = common.get_base_config(common.parse_setup(config_string))
    toy = config.setup == "toy"
    # Training (when the workdir has no trained agents yet): the paper's mixed-scenario setup.
    config.alphas = (0.2, 0.5, 0.8)

    e = config.eval = ml_collections.ConfigDict()
    e.alphas = (0.2, 0.5, 0.8)
    e.train_agents = True  # run/reuse Self-Awareness Training first; False: evaluate the pool as is
    e.seed = 0

    # Generation (greedy).
    e.max_new_tokens = 24 if toy else 512
    e.batch_size = 64 if toy else 32  # decode rows per compiled batch
    e.early_refusal = True  # stop a row as soon as it has emitted the whole refusal

    # Placement: "shared" = every agent on config.mesh; "per_agent" = the devices split into one
    # disjoint sub-mesh per agent (bigger agents get the spare devices); "pool" = the `devices`
    # given in config.pool.agents. eval.agent_devices (one list of device indices per agent)
    # overrides all three.
    e.placement = "shared"
    e.agent_devices = ()
    e.micro_batch_size = 0  # queries per pipeline micro-batch; 0 = all at once (no pipelining)
    e.pipeline = "auto"  # auto: pipeline when the agents' devices are disjoint; on; off

    # What a query pays: "final" (the answering agent's cost) or "cumulative" (every agent visited).
    e.cost_mode = "final"
    e.run_cascade = True  # run the live cascade engine; False: DiSRouter records replayed from outcomes

    # Baselines and central routers. Their agents answer the plain prompt (no scenario, no refusal
    # option): "plain"; or "scenario" to give them the same α-prompted replies as the cascade.
    e.baselines = ("smallest", "largest", "random_uniform", "random_cost_matched", "oracle")
    e.routers = ("classifier_router", "frugalgpt")
    e.baseline_replies = "plain"
    # Whose plain replies: "base" = the pool before Self-Awareness Training (the paper's baselines;
    # also the forced answers that score a refusal), "trained" = the evaluated agents.
    e.baseline_agents = "base"
    # Routers are fitted on "train": queries of the training split (router_train_per_task per
    # task), or "split": a router_train_fraction of the evaluation queries, which are then left out
    # of every method's figures so all methods are compared on the same held-out queries.
    e.router_train = "train"
    e.router_train_per_task = 150 if toy else 500
    e.router_train_fraction = 0.3
    e.router_hidden_size = 0  # 0: logistic regression; > 0: one-hidden-layer MLP
    e.router_steps = 400
    e.feature_agent = ""  # whose base (untrained) model embeds queries for the classifier; "" = the first
    e.feature_batch_size = 32

    # The RL ablation: the same cascade with every trained agent as SFT left it ("disrouter_sft").
    e.sft_ablation = True
    # Sub-pools reported beside the full pool after the evaluation (each replayed from its tables,
    # no retraining, as in replay mode): the paper's 1.5B / 3B / 14B, here agents 2, 3 and 5.
    e.subpools = (("toy-s", "toy-m", "toy-xl"),) if toy else (
        ("Qwen2.5-1.5B-Instruct", "Qwen2.5-3B-Instruct", "Qwen2.5-14B-Instruct"),)

    # Replay mode: a sub-pool (agent names in cascade order) re-scored from this workdir's tables
    # without running any model; costs "renormalize" (0.1 ... 0.9 over the sub-pool) or "pool".
    e.replay_pool = ()
    e.replay_costs = "renormalize"
    return config
