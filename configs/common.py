"""Shared defaults for every config file. Each config file is plain Python returning a ConfigDict.

One recipe, two sizes. ``get_base_config("paper")`` is the paper's setup: the Qwen2.5-Instruct pool
(local directories or Hub ids), the seven in-domain training sets, 10,000 SFT and RL samples per
agent, bfloat16. ``get_base_config("toy")`` is the same config with `TOY_OVERLAY` applied: the
embedded toy pool (built under ``<workdir>/pool`` when absent) and its tasks, float32, and the
sizes that fit tiny agents on a laptop CPU (counts, steps, learning rates, lengths, batch sizes).
The overlay changes nothing else: the stages, the labelling rule, the 50/50 balance, the reward,
what is trained and the regulariser are the same for both (`tests/test_pipeline_config.py`
checks that the overlay only touches `TOY_OVERLAY`'s keys).

Pick with the config string: ``--config configs/rl_alpha05.py:toy``.
"""

from __future__ import annotations

import ml_collections

QWEN25_SIZES = ("0.5B", "1.5B", "3B", "7B", "14B")
IN_DOMAIN = ("gsm8k", "arc", "mmlu", "race", "openbookqa", "drop", "cosmosqa")
OUT_OF_DOMAIN = ("squad", "hellaswag", "headqa")
TOY_IN_DOMAIN = ("toy_knowledge", "toy_skill")
TOY_OUT_OF_DOMAIN = ("toy_ood",)
SETUPS = ("paper", "toy")


def parse_setup(config_string: str | None) -> str:
    setup = (config_string or "paper").strip() or "paper"
    if setup not in SETUPS:
        raise ValueError(f"config string {setup!r}: expected one of {SETUPS}")
    return setup


def paper_pool(root: str = "") -> tuple[dict, ...]:
    """Qwen2.5-Instruct agents ordered by cost; ``root`` is a folder of local copies, else Hub ids.
    A tuple, so that ``--config.pool.agents="({'name': ..., 'path': ..., 'cost': ...}, ...)"``
    overrides it (ml_collections parses tuple literals, not lists)."""
    costs = [0.1, 0.3, 0.5, 0.7, 0.9]
    agents = []
    for size, cost in zip(QWEN25_SIZES, costs):
        name = f"Qwen2.5-{size}-Instruct"
        agents.append({"name": name, "path": f"{root}/{name}" if root else f"Qwen/{name}", "cost": cost})
    return tuple(agents)


# The toy setup: dotted config paths -> values. Sizes and the source of agents and tasks only.
TOY_OVERLAY: dict[str, object] = {
    "dtype": "float32",
    "pool.toy": True,
    "pool.agents": (),
    "data.train_tasks": TOY_IN_DOMAIN,
    "data.eval_tasks": TOY_IN_DOMAIN + TOY_OUT_OF_DOMAIN,
    "data.out_of_domain": TOY_OUT_OF_DOMAIN,
    "data.train_per_task": 0,
    "data.eval_per_task": 0,
    "label.max_new_tokens": 12,
    "label.batch_size": 256,
    "sft.steps": 300,
    "sft.batch_size": 64,
    "sft.learning_rate": 6e-4,
    "sft.warmup_steps": 20,
    "sft.length_buckets": (128, 144, 192),
    "rl.steps": 80,
    "rl.prompts_per_step": 32,
    "rl.max_new_tokens": 12,
    "rl.learning_rate": 3e-4,
    "rl.warmup_steps": 5,
    "assess.per_task": 0,
    "assess.max_new_tokens": 12,
    "assess.batch_size": 256,
    "lora.rank": 8,
    "lora.alpha": 16.0,
}


def get_base_config(setup: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.setup = setup
    c.seed = 0
    c.dtype = "bfloat16"
    c.param_dtype = "float32"
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})

    # Agents: a Hugging Face model directory + a cost, in cascade order.
    c.pool = ml_collections.ConfigDict()
    c.pool.toy = False
    c.pool.dir = ""  # toy: where the pool is built; empty = <workdir>/pool
    c.pool.reduced = False  # toy: the small pool used by tests
    # toy: a mixed pool, its second agent a Llama with a Llama-3 tokenizer and template
    # (toy.pool_config.mixed_agents); off, the pool is the Qwen2/ChatML one, unchanged.
    c.pool.mixed = False
    c.pool.agents = paper_pool()
    # Which agents to train; the last agent always answers, so its refusals are never used.
    c.pool.train_last_agent = False

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""  # local copies: <dir>/<task>/...; empty = Hugging Face Hub
    # Splits in order of preference, the first with local files wins (disrouter_jax/task_data.py);
    # eval_splits=() is each task's own evaluation split. A task that trains on its evaluation
    # split has its evaluated rows held out of training.
    c.data.train_splits = ("train",)
    c.data.eval_splits = ()
    c.data.train_tasks = IN_DOMAIN
    c.data.eval_tasks = IN_DOMAIN + OUT_OF_DOMAIN
    c.data.out_of_domain = OUT_OF_DOMAIN
    c.data.train_per_task = 3000  # 0 = all
    c.data.eval_per_task = 500

    # Stage 1: labelling with the agent's own samples.
    c.label = ml_collections.ConfigDict()
    c.label.num_samples = 8
    c.label.temperature = 1.0
    c.label.top_p = 1.0
    c.label.max_new_tokens = 512
    c.label.batch_size = 32
    # Queries per chunk file (labels.partNNNNN.jsonl): an interrupted run resumes at the first
    # missing chunk.
    c.label.chunk_size = 512

    # Stage 2: SFT on self-labelled targets: refuse iff p(x) < 1 - alpha, balanced 50/50.
    c.sft = ml_collections.ConfigDict()
    c.sft.num_examples = 10_000
    c.sft.balance = 0.5
    # Over what the 50/50 holds: "per_alpha", each scenario's targets on their own (the paper's
    # recipe read per scenario); "pooled", the union of every scenario's targets, so that each α
    # keeps its own answer rate (measured on the toy pool: no α lever either; README,
    # "Self-Awareness Training").
    c.sft.balance_scope = "per_alpha"
    # Regulariser: this share of every SFT batch replays the agent's own plain-prompt answers
    # (its correct answer to training queries it gets right at least half the time), so that
    # learning the refusal under the scenario prompts does not erase what it knows (0 = off).
    c.sft.replay_fraction = 0.5
    c.sft.steps = 1000
    c.sft.batch_size = 16
    c.sft.grad_accum = 1
    c.sft.learning_rate = 1e-5
    c.sft.warmup_steps = 50
    c.sft.weight_decay = 0.0
    c.sft.max_grad_norm = 1.0
    c.sft.length_buckets = (256, 512, 1024, 2048)

    # Stage 3: scenario-conditioned policy gradient (GRPO-style groups).
    c.rl = ml_collections.ConfigDict()
    c.rl.steps = 500
    c.rl.prompts_per_step = 16
    c.rl.group_size = 8
    c.rl.gamma = 0.5
    c.rl.temperature = 1.0
    c.rl.max_new_tokens = 512
    c.rl.clip_eps = 0.2
    c.rl.kl_coef = 0.0
    # Advantages are reward minus the group mean, not divided by the group's std: the std would
    # give every scenario's groups the same push whatever their stakes (Liu et al. 2025, "Dr. GRPO").
    c.rl.normalize_advantages = False
    # Regulariser: every step also trains, by cross-entropy weighted replay_coef, on replay_rows
    # of the agent's own plain-prompt answers (the SFT replay rows; InstructGPT's "PPO-ptx"), so
    # that the policy moving under the scenario prompts does not erase what it knows (0 = off;
    # measured on the toy pool: README, "Self-Awareness Training").
    c.rl.replay_coef = 0.5
    c.rl.replay_rows = 16
    c.rl.learning_rate = 1e-6
    c.rl.warmup_steps = 20
    c.rl.max_grad_norm = 1.0
    # The prompts_per_step * group_size rows of a step and its replay_rows in this many micro-batches
    # (it divides both); the real pool on 8 GPUs of 71.6 GiB needs 8 (README, "Before your first GPU run").
    c.rl.grad_accum = 1

    # The scenarios: a single α (rl_alphaXX) or several drawn per prompt (rl_mixed).
    c.alphas = (0.5,)

    # Self-assessment after each stage on held-out queries (selfaware/assessment.py): refusal rate
    # and refusal-vs-would-be-wrong accuracy / F1 per α, in agents/<name>/<stage>/assessment.json.
    c.assess = ml_collections.ConfigDict()
    c.assess.enabled = True
    c.assess.stages = ("base", "sft", "rl")
    c.assess.alphas = (0.2, 0.5, 0.8)
    c.assess.per_task = 100  # held-out queries per evaluation task; 0 = all
    c.assess.max_new_tokens = 512
    c.assess.batch_size = 32

    # Full fine-tuning (the paper) unless enabled: then adapters on lora.targets are trained and
    # merged on export.
    c.lora = ml_collections.ConfigDict()
    c.lora.enabled = False
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 50
    c.checkpoint.max_to_keep = 2

    # The plan (disrouter_jax/plan.py): per agent, parameters, bytes per device and tokens per stage,
    # and every input checked, without loading weights. plan_only=True prints it and exits.
    c.plan_only = False
    c.plan = ml_collections.ConfigDict()
    c.plan.num_devices = 0  # 0: this host's devices; else plan for that many (e.g. 8 GPUs elsewhere)
    c.plan.platform = ""  # "": this host's backend; "gpu" / "tpu" / "cpu" to plan for another host
    c.plan.device_memory_gib = 0.0  # 0: what the devices report (none on CPU: memory not checked)

    c.stages = ("label", "sft", "rl")
    c.log_every_steps = 10
    c.progress = True
    if setup == "toy":
        apply_overlay(c, TOY_OVERLAY)
    return c


def apply_overlay(config: ml_collections.ConfigDict, overlay: dict[str, object]) -> ml_collections.ConfigDict:
    """Set each dotted path of ``overlay``; a path the config does not have is an error."""
    for path, value in overlay.items():
        *parents, leaf = path.split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"overlay: the config has no field {path!r}")
        node[leaf] = value
    return config
