"""Shared defaults for every config file. Each config file is plain Python returning a ConfigDict.

Two setups share one schema:
- ``paper``: the Qwen2.5-Instruct pool (local directories or Hub ids), the seven in-domain training
  sets, 10,000 SFT and 10,000 RL samples per agent, bfloat16.
- ``toy``: the embedded toy pool (built under ``<workdir>/pool`` when absent), float32, minutes on
  a laptop CPU.
Pick with the config string: ``--config configs/rl_alpha05.py:toy``.
"""

from __future__ import annotations

import ml_collections

QWEN25_SIZES = ("0.5B", "1.5B", "3B", "7B", "14B")
IN_DOMAIN = ("gsm8k", "arc", "mmlu", "race", "openbookqa", "drop", "cosmosqa")
OUT_OF_DOMAIN = ("squad", "hellaswag", "headqa")
SETUPS = ("paper", "toy")


def parse_setup(config_string: str | None) -> str:
    setup = (config_string or "paper").strip() or "paper"
    if setup not in SETUPS:
        raise ValueError(f"config string {setup!r}: expected one of {SETUPS}")
    return setup


def paper_pool(root: str = "") -> list[dict]:
    """Qwen2.5-Instruct agents ordered by cost; ``root`` is a folder of local copies, else Hub ids."""
    costs = [0.1, 0.3, 0.5, 0.7, 0.9]
    agents = []
    for size, cost in zip(QWEN25_SIZES, costs):
        name = f"Qwen2.5-{size}-Instruct"
        agents.append({"name": name, "path": f"{root}/{name}" if root else f"Qwen/{name}", "cost": cost})
    return agents


def get_base_config(setup: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.setup = setup
    c.seed = 0
    c.dtype = "bfloat16" if setup == "paper" else "float32"
    c.param_dtype = "float32"
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})

    # Agents: a Hugging Face model directory + a cost, in cascade order.
    c.pool = ml_collections.ConfigDict()
    c.pool.toy = setup == "toy"
    c.pool.dir = ""  # toy: where the pool is built; empty = <workdir>/pool
    c.pool.reduced = False  # toy: the small pool used by tests
    c.pool.agents = [] if setup == "toy" else paper_pool()
    # Which agents to train; the last agent always answers, so its refusals are never used.
    c.pool.train_last_agent = False

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""  # local copies: <dir>/<task>/...; empty = Hugging Face Hub
    c.data.train_tasks = ("toy_knowledge", "toy_skill") if setup == "toy" else IN_DOMAIN
    c.data.eval_tasks = ("toy_knowledge", "toy_skill") if setup == "toy" else IN_DOMAIN + OUT_OF_DOMAIN
    c.data.out_of_domain = () if setup == "toy" else OUT_OF_DOMAIN
    c.data.train_per_task = 0 if setup == "toy" else 3000  # 0 = all
    c.data.eval_per_task = 0 if setup == "toy" else 500

    # Stage 1: labelling with the agent's own samples.
    c.label = ml_collections.ConfigDict()
    c.label.num_samples = 8
    c.label.temperature = 1.0
    c.label.top_p = 1.0
    c.label.max_new_tokens = 16 if setup == "toy" else 512
    c.label.batch_size = 64 if setup == "toy" else 32

    # Stage 2: SFT on self-labelled targets.
    c.sft = ml_collections.ConfigDict()
    c.sft.num_examples = 10_000
    # The paper balances answer/refusal targets 50/50. The toy agents are too small for that prior:
    # the cheapest one gets ~75 % of queries wrong, and balanced targets teach it to answer half.
    c.sft.balance = None if setup == "toy" else 0.5
    # Loss weight of a refusal target: (1 - alpha) ** refusal_weight_gamma (answers weigh 1); 0 =
    # unweighted (the paper). Toy: the labels of the 72 training queries differ between scenarios
    # on a handful of queries only, too little for the scenario to move held-out refusals (they
    # did not fall with alpha); weights .64 / .25 / .04 make the cheaper scenario refuse less.
    c.sft.refusal_weight_gamma = 2.0 if setup == "toy" else 0.0
    c.sft.steps = 200 if setup == "toy" else 1000
    c.sft.batch_size = 32 if setup == "toy" else 16
    c.sft.grad_accum = 1
    c.sft.learning_rate = 1e-2 if setup == "toy" else 1e-5
    c.sft.warmup_steps = 10 if setup == "toy" else 50
    c.sft.weight_decay = 0.0
    c.sft.max_grad_norm = 1.0
    # Toy: scenario prompts are up to 125 tokens (+ 16 generated in RL); with a 128 bucket most
    # batches held one longer example and were padded to 256, twice the work.
    c.sft.length_buckets = (144, 256) if setup == "toy" else (256, 512, 1024, 2048)
    # "all": full fine-tuning (or LoRA alone when lora.enabled); "refusal_rows": the embedding rows
    # of the refusal's tokens; "new_tokens": those and the rows of the scenario instructions' own
    # words (a learned prompt per scenario); with lora.enabled, adapters next to the rows (see
    # training/sft_stage.py). Toy agents forget their facts under full fine-tuning at any rate
    # that teaches the refusal (measured: held-out accuracy 0.50 -> 0.10).
    c.sft.trainable = "new_tokens" if setup == "toy" else "all"

    # Stage 3: scenario-conditioned policy gradient.
    c.rl = ml_collections.ConfigDict()
    c.rl.num_prompts = 10_000
    c.rl.steps = 20 if setup == "toy" else 500
    c.rl.prompts_per_step = 16
    c.rl.group_size = 8
    c.rl.gamma = 0.5
    c.rl.temperature = 1.0
    c.rl.max_new_tokens = 16 if setup == "toy" else 512
    c.rl.clip_eps = 0.2
    c.rl.kl_coef = 0.0
    # Toy: raw advantages keep the scenario's scale (refusing a query it gets wrong earns .89 at
    # alpha 0.2, .45 at 0.8); dividing by the group's std gives every scenario the same push.
    c.rl.normalize_advantages = setup != "toy"
    c.rl.learning_rate = 3e-3 if setup == "toy" else 1e-6
    c.rl.warmup_steps = 5 if setup == "toy" else 20
    c.rl.max_grad_norm = 1.0
    c.rl.trainable = "new_tokens" if setup == "toy" else "all"

    # The scenarios: a single α (rl_alphaXX) or several drawn per prompt (rl_mixed).
    c.alphas = (0.5,)

    # Self-assessment after each stage on held-out queries (selfaware/assessment.py): refusal rate
    # and refusal-vs-would-be-wrong accuracy / F1 per α, in agents/<name>/<stage>/assessment.json.
    c.assess = ml_collections.ConfigDict()
    c.assess.enabled = True
    c.assess.stages = ("base", "sft", "rl")
    c.assess.alphas = (0.2, 0.5, 0.8)
    c.assess.per_task = 0 if setup == "toy" else 100  # held-out queries per evaluation task; 0 = all
    c.assess.max_new_tokens = 16 if setup == "toy" else 512
    c.assess.batch_size = 128 if setup == "toy" else 32

    c.lora = ml_collections.ConfigDict()
    c.lora.enabled = setup == "toy"
    c.lora.rank = 8 if setup == "toy" else 16
    # Toy: scale alpha / rank = 1/8, so at the rows' learning rate the adapters move ~10x slower
    # than the rows (one optimizer, one rate); at scale 4 they erased the agents' facts.
    c.lora.alpha = 1.0 if setup == "toy" else 32.0
    c.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 50
    c.checkpoint.max_to_keep = 2

    c.stages = ("label", "sft", "rl")
    c.log_every_steps = 10
    c.progress = True
    return c
