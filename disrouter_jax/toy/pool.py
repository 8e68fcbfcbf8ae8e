"""The toy agent pool: tiny Qwen2 agents of increasing size pre-trained on the toy world.

`build_pool(out_dir, config)` builds (or reuses) a pool directory::

    out_dir/
      pool.json                 the contract for later stages: agents in cost order (name, path,
                                cost, params, held-out accuracy per family, build seconds), the
                                world config and the config hash
      tokenizer/                the world's tokenizer (also copied into every agent)
      tasks/toy_knowledge/{train,test}.jsonl, tasks/toy_skill/...   the registered toy tasks' files
      agents/<name>/            a normal Hugging Face model directory: config.json,
                                model.safetensors, generation_config.json, tokenizer files, and
                                toy_agent.json (written last: the agent's completion record)

An agent is "a Hugging Face model directory + a cost", exactly like a Qwen2.5 agent. Each agent is
pre-trained from scratch by the project's jitted SFT step (`training.sft.make_sft_step`) on
`world.pretraining_corpus(level, n)` as single-turn ChatML chats (prompt = the toy task's
messages, i.e. the bare question under the template's default system prompt; response = the
answer + <|im_end|>), then scored on the held-out queries with greedy generation and the toy tasks'
checker.

Determinism: everything derives from `PoolConfig` (world seed, pool seed); rebuilding an agent
gives the same safetensors bytes on the same software stack.

Caching: each agent directory is built under a temporary name and renamed into place, with its
completion record inside, so a crash never leaves a half-written agent under its final name. A
rebuild reuses every agent whose record carries the same fingerprint (world, agent spec, level,
training knobs, seed; costs excluded) and trains only the missing ones. A directory built with a
different config is never silently replaced: pass `overwrite=True`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from disrouter_jax.generation import chat_prompt_ids, generate, stop_token_ids_for
from disrouter_jax.models import qwen2
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.prompts import SUPPORTED_ALPHAS
from disrouter_jax.selfaware.data import TokenizedSFTExample, bucket_pad_batch, tokenize_sft_example
from disrouter_jax.toy import tasks as toy_tasks
from disrouter_jax.toy.tokenizer import IM_END, PAD_TOKEN, build_tokenizer, load_tokenizer
from disrouter_jax.toy.world import FAMILIES, HELDOUT, KNOWLEDGE, SKILL, ToyWorld, WorldConfig
from disrouter_jax.training.optim import OptimConfig
from disrouter_jax.training.sft import TokenBatch, make_sft_step
from disrouter_jax.training.state import create_train_state

logger = logging.getLogger(__name__)

# Bump when the build procedure changes in a way that changes the agents: old pools then stop
# matching (and are only replaced with overwrite=True).
FORMAT_VERSION = 1
POOL_FILE = "pool.json"
AGENT_RECORD_FILE = "toy_agent.json"
TOKENIZER_RECORD_FILE = "toy_tokenizer.json"
TOKENIZER_DIR = "tokenizer"
AGENTS_DIR = "agents"
TASKS_DIR = "tasks"


class PoolError(ValueError):
    """A pool directory that cannot be used as asked; the message names the file or agent."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """Shape and pre-training budget of one agent. Ladder level = position in PoolConfig.agents."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    steps: int
    batch_size: int
    learning_rate: float
    num_kv_heads: int | None = None  # None: = num_heads (plain multi-head attention)

    def __post_init__(self):
        def fail(field: str, requirement: str):
            raise ValueError(f"AgentSpec({self.name!r}).{field}={getattr(self, field)!r}: {requirement}")

        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name) or self.name[0] == ".":
            fail("name", "must be a non-empty directory name of letters, digits, '-', '_', '.'")
        for field in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "steps", "batch_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(field, "must be an int >= 1")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            fail("hidden_size", f"must split into num_heads={self.num_heads} heads of even size")
        if self.num_kv_heads is not None and (self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads):
            fail("num_kv_heads", f"must divide num_heads={self.num_heads}")
        if not self.learning_rate > 0:
            fail("learning_rate", "must be > 0")

    def model_config(self, vocab_size: int, *, eos_token_id: int, bos_token_id: int | None,
                     rope_theta: float, max_position_embeddings: int) -> qwen2.Qwen2Config:
        return qwen2.Qwen2Config(
            vocab_size=vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_layers=self.num_layers, num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads or self.num_heads, head_dim=self.hidden_size // self.num_heads,
            rope_theta=rope_theta, tie_word_embeddings=True,
            max_position_embeddings=max_position_embeddings,
            bos_token_id=bos_token_id, eos_token_id=eos_token_id)


def default_costs(num_agents: int) -> tuple[float, ...]:
    """The paper's costs: evenly spaced from 0.1 to 0.9 (a single agent costs 0.1)."""
    if num_agents == 1:
        return (0.1,)
    return tuple(round(float(c), 6) for c in np.linspace(0.1, 0.9, num_agents))


# Default ladder: widths and depths grow together; bigger agents also train longer. Sized so the
# whole build takes a few CPU-minutes: pre-training is dominated by memorising facts, which takes
# ~150 passes over an agent's facts (hence knowledge_fraction=0.85). Deeper agents need lower
# learning rates: at 8e-3 the 3-layer agent stalls on the "guess the commonest value" plateau.
_DEFAULT_AGENTS = (
    AgentSpec("toy-xs", hidden_size=16, num_layers=2, num_heads=2, intermediate_size=48,
              steps=150, batch_size=64, learning_rate=1e-2),
    AgentSpec("toy-s", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=96,
              steps=200, batch_size=64, learning_rate=8e-3),
    AgentSpec("toy-m", hidden_size=48, num_layers=2, num_heads=2, intermediate_size=128,
              steps=220, batch_size=64, learning_rate=6e-3),
    AgentSpec("toy-l", hidden_size=64, num_layers=3, num_heads=4, intermediate_size=176,
              steps=230, batch_size=64, learning_rate=5e-3),
    AgentSpec("toy-xl", hidden_size=96, num_layers=3, num_heads=4, intermediate_size=256,
              steps=260, batch_size=64, learning_rate=4e-3),
)

_DEFAULT_WORLD = dict(num_entities=40, num_cities=16, skill_max_digits=2, skill_max_operands=2,
                      skill_queries_per_tier=30, skill_corpus_size=2000)

_REDUCED_AGENTS = (
    AgentSpec("toy-xs", hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
              steps=120, batch_size=64, learning_rate=2e-2),
    AgentSpec("toy-s", hidden_size=24, num_layers=1, num_heads=2, intermediate_size=48,
              steps=140, batch_size=64, learning_rate=2e-2),
    AgentSpec("toy-m", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
              steps=160, batch_size=64, learning_rate=2e-2),
    AgentSpec("toy-l", hidden_size=48, num_layers=1, num_heads=2, intermediate_size=96,
              steps=180, batch_size=64, learning_rate=2e-2),
)


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """Everything a pool build depends on. `PoolConfig()` is the default 5-agent pool;
    `PoolConfig.reduced()` a 4-agent one small enough for unit tests.

    Fields:
      world: the toy world (its seed included).
      agents: the ladder, smallest (cheapest) first; parameter counts must increase strictly.
      seed: model initialisation and batch order.
      costs: one per agent, strictly increasing; None = `default_costs(len(agents))`.
      knowledge_fraction: share of each batch drawn from the agent's facts (the rest from the
        arithmetic corpus); facts are few and need many passes to be memorised.
      scenario_every, scenario_batch_size: every scenario_every-th step (0 = never) is a batch of
        scenario_batch_size examples prompted with a scenario system message (`alpha` in
        SUPPORTED_ALPHAS, the prompt later stages use) and still answered plainly, so that agents,
        like an instruct model, answer the same under the routing instructions as without them
        (they never see the refusal: that is what self-awareness training teaches).
      warmup_fraction, end_lr_ratio, weight_decay, adam_b2, max_grad_norm: AdamW and its schedule
        (cosine decay).
      eval_max_new_tokens: generation budget when scoring held-out queries (answers are short).
      rope_theta, max_position_embeddings: written into each agent's config.json.
    """

    world: WorldConfig = WorldConfig(**_DEFAULT_WORLD)
    agents: tuple[AgentSpec, ...] = _DEFAULT_AGENTS
    seed: int = 0
    costs: tuple[float, ...] | None = None
    knowledge_fraction: float = 0.85
    scenario_every: int = 4
    scenario_batch_size: int = 32
    warmup_fraction: float = 0.1
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_b2: float = 0.95
    max_grad_norm: float = 1.0
    eval_max_new_tokens: int = 10
    rope_theta: float = 10_000.0
    max_position_embeddings: int = 2048

    def __post_init__(self):
        def fail(field: str, requirement: str):
            raise ValueError(f"PoolConfig.{field}={getattr(self, field)!r}: {requirement}")

        if not isinstance(self.world, WorldConfig):
            fail("world", "must be a WorldConfig")
        if not self.agents or not all(isinstance(a, AgentSpec) for a in self.agents):
            fail("agents", "must be a non-empty tuple of AgentSpec")
        names = [a.name for a in self.agents]
        if len(set(names)) != len(names):
            fail("agents", f"agent names must be unique, got {names}")
        if self.costs is not None:
            if len(self.costs) != len(self.agents):
                fail("costs", f"needs one cost per agent ({len(self.agents)})")
            if any(not c > 0 for c in self.costs) or any(b <= a for a, b in zip(self.costs, self.costs[1:])):
                fail("costs", "must be positive and strictly increasing (agents are in cost order)")
        if not 0.0 <= self.knowledge_fraction <= 1.0:
            fail("knowledge_fraction", "must lie in [0, 1]")
        for field in ("scenario_every", "scenario_batch_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                fail(field, "must be an int >= 0")
        if self.scenario_every and not self.scenario_batch_size:
            fail("scenario_batch_size", "must be >= 1 when scenario_every > 0")
        if not 0.0 <= self.warmup_fraction < 1.0:
            fail("warmup_fraction", "must lie in [0, 1)")
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            fail("end_lr_ratio", "must lie in [0, 1]")
        if self.eval_max_new_tokens < 1:
            fail("eval_max_new_tokens", "must be >= 1")

    @classmethod
    def reduced(cls, seed: int = 0) -> "PoolConfig":
        """4 one-layer agents of 10K-45K parameters on `WorldConfig.reduced()`, a few dozen steps each."""
        return cls(world=WorldConfig.reduced(seed=seed), agents=_REDUCED_AGENTS, seed=seed,
                   knowledge_fraction=0.75)

    @classmethod
    def default(cls, seed: int = 0) -> "PoolConfig":
        """The default pool with `seed` as both the world's and the pool's seed."""
        return cls(world=dataclasses.replace(cls().world, seed=seed), seed=seed)

    @property
    def agent_costs(self) -> tuple[float, ...]:
        return tuple(self.costs) if self.costs is not None else default_costs(len(self.agents))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PoolConfig":
        data = dict(data)
        world = _world_config_from_dict(data.pop("world"))
        agents = tuple(AgentSpec(**a) for a in data.pop("agents"))
        costs = data.pop("costs", None)
        return cls(world=world, agents=agents, costs=None if costs is None else tuple(costs), **data)

    def fingerprint(self) -> str:
        """Hash of the whole config: a complete pool is reused only under the same hash."""
        return _hash({"format_version": FORMAT_VERSION, "config": self.to_dict()})

    def agent_fingerprint(self, level: int) -> str:
        """Hash of what one agent's weights depend on (costs and the other agents excluded)."""
        knobs = {k: v for k, v in self.to_dict().items() if k not in ("agents", "costs", "world")}
        return _hash({"format_version": FORMAT_VERSION, "world": dataclasses.asdict(self.world),
                      "agent": dataclasses.asdict(self.agents[level]), "level": level,
                      "num_levels": len(self.agents), "knobs": knobs})


def _world_config_from_dict(data: Mapping[str, Any]) -> WorldConfig:
    fields = {f.name for f in dataclasses.fields(WorldConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"world config: unknown field(s) {unknown}")
    return WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------
# Data: chat-formatted pre-training examples and batches
# --------------------------------------------------------------------------------------------


def plain_messages(question: str, alpha: float | None = None) -> list[dict[str, str]]:
    """The chat a toy agent is pre-trained and scored on: exactly the toy task's prompt (bare
    question; with `alpha` the scenario system message, else the template's default one)."""
    task = toy_tasks.task_for_family(KNOWLEDGE)
    example = Example(task=task.name, id="q", question=question, gold=("x",), answer_type="span")
    return task.messages(example, alpha=alpha)


def pretraining_examples(world: ToyWorld, tokenizer, level: int, num_levels: int, *, scenario: bool = False
                         ) -> dict[str, list[TokenizedSFTExample]]:
    """{family: tokenized examples} of `world.pretraining_corpus(level, num_levels)`.

    scenario=True: the i-th pair is prompted with the scenario of SUPPORTED_ALPHAS[i % 3]
    (the answer stays the plain answer).
    """
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    fact_questions = {f.question for f in world.facts}
    out: dict[str, list[TokenizedSFTExample]] = {KNOWLEDGE: [], SKILL: []}
    for i, (question, answer) in enumerate(world.pretraining_corpus(level, num_levels)):
        alpha = SUPPORTED_ALPHAS[i % len(SUPPORTED_ALPHAS)] if scenario else None
        prompt_ids = chat_prompt_ids(tokenizer, plain_messages(question, alpha))
        response_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        family = KNOWLEDGE if question in fact_questions else SKILL
        out[family].append(tokenize_sft_example(prompt_ids, response_ids, eos_id))
    return out


def _cycled_indices(num_items: int, rng: np.random.Generator):
    """Endless stream of indices: a fresh permutation per pass, so every item is seen equally."""
    while True:
        yield from rng.permutation(num_items)


def batch_stream(examples: Mapping[str, Sequence[TokenizedSFTExample]], *, batch_size: int,
                 knowledge_fraction: float, length_bucket: int, pad_id: int, seed: int):
    """Endless stream of padded `TokenBatch`es of a fixed shape [batch_size, length_bucket]."""
    rng = np.random.default_rng(seed)
    num_knowledge = round(batch_size * knowledge_fraction) if examples[SKILL] else batch_size
    if not examples[KNOWLEDGE]:
        num_knowledge = 0
    counts = {KNOWLEDGE: num_knowledge, SKILL: batch_size - num_knowledge}
    streams = {family: _cycled_indices(len(examples[family]), rng) for family in counts if counts[family]}
    while True:
        rows = [examples[family][next(streams[family])] for family in counts for _ in range(counts[family])]
        padded = bucket_pad_batch(rows, [length_bucket], pad_id, batch_size=batch_size)
        if padded.num_dropped:
            raise ValueError(f"batch_stream: {padded.num_dropped} examples exceed length_bucket={length_bucket}")
        yield TokenBatch.from_padded(padded)


# --------------------------------------------------------------------------------------------
# Pre-training and scoring one agent
# --------------------------------------------------------------------------------------------


def _tokenizer_ids(tokenizer) -> dict[str, int]:
    return {"eos": tokenizer.convert_tokens_to_ids(IM_END), "pad": tokenizer.convert_tokens_to_ids(PAD_TOKEN)}


def agent_model_config(config: PoolConfig, level: int, tokenizer) -> qwen2.Qwen2Config:
    ids = _tokenizer_ids(tokenizer)
    return config.agents[level].model_config(
        len(tokenizer), eos_token_id=ids["eos"], bos_token_id=ids["pad"], rope_theta=config.rope_theta,
        max_position_embeddings=config.max_position_embeddings)


def pretrain_agent(config: PoolConfig, level: int, world: ToyWorld, tokenizer, *, progress: bool = False
                   ) -> tuple[qwen2.Qwen2, dict[str, float]]:
    """Initialise agent `level` from the pool seed and pre-train it with the project's SFT step.

    Returns the trained model and the last step's metrics (loss, token_accuracy) plus
    loss_curve, the (step, loss) of every 25th step.
    """
    from tqdm.auto import tqdm

    spec = config.agents[level]
    num_levels = len(config.agents)
    pad_id = _tokenizer_ids(tokenizer)["pad"]

    def stream(scenario: bool, batch_size: int, seed_tag: int):
        examples = pretraining_examples(world, tokenizer, level, num_levels, scenario=scenario)
        # One fixed shape per stream, hence one compilation of the step for each.
        longest = max(len(ex.input_ids) for family in examples.values() for ex in family)
        return batch_stream(examples, batch_size=batch_size, knowledge_fraction=config.knowledge_fraction,
                            length_bucket=longest, pad_id=pad_id, seed=_seed_for(config.seed, level, seed_tag))

    plain_batches = stream(False, spec.batch_size, 1)
    scenario_batches = stream(True, config.scenario_batch_size, 2) if config.scenario_every else None
    optim = OptimConfig(
        learning_rate=spec.learning_rate, total_steps=spec.steps,
        warmup_steps=min(int(spec.steps * config.warmup_fraction), spec.steps - 1), decay="cosine",
        end_lr_ratio=config.end_lr_ratio, weight_decay=config.weight_decay, b2=config.adam_b2,
        max_grad_norm=config.max_grad_norm)
    model = qwen2.Qwen2(agent_model_config(config, level, tokenizer), rngs=nnx.Rngs(_seed_for(config.seed, level, 0)))
    state = create_train_state(model, optim)
    step = make_sft_step(optim)
    metrics: dict[str, Any] = {}
    loss_curve: list[tuple[int, float]] = []
    with tqdm(total=spec.steps, desc=f"{spec.name} [{level + 1}/{num_levels}]", unit="step",
              disable=not progress, leave=True) as bar:
        for i in range(spec.steps):
            is_scenario_step = scenario_batches is not None and (i + 1) % config.scenario_every == 0
            state, metrics = step(state, next(scenario_batches if is_scenario_step else plain_batches))
            if (i + 1) % 25 == 0 or i + 1 == spec.steps:
                host = jax.device_get(metrics)
                if not host["update_applied"]:
                    raise FloatingPointError(f"agent {spec.name!r}: non-finite loss or gradient at step {i + 1} "
                                             f"(loss={float(host['loss'])}); lower its learning_rate")
                bar.set_postfix(loss=f"{float(host['loss']):.3f}", acc=f"{float(host['token_accuracy']):.2f}")
                loss_curve.append((i + 1, round(float(host["loss"]), 4)))
            bar.update(1)
    host = jax.device_get(metrics)
    return state.model(), {"loss": float(host["loss"]), "token_accuracy": float(host["token_accuracy"]),
                           "loss_curve": loss_curve}


@dataclasses.dataclass(frozen=True)
class FamilyScore:
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def score_agent(model: qwen2.Qwen2, tokenizer, world: ToyWorld, *, split: str = HELDOUT, max_new_tokens: int = 10,
                model_dir: str | os.PathLike | None = None) -> dict[str, tuple[str, ...]]:
    """Greedy answers to every query of `split`, checked by the toy tasks.

    Returns {family: ids of the queries answered correctly}, every family present.
    """
    queries = world.queries_for(split)
    examples = [toy_tasks.query_to_example(q) for q in queries]
    prompts = [chat_prompt_ids(tokenizer, toy_tasks.task_for_family(q.family).messages(ex, alpha=None))
               for q, ex in zip(queries, examples)]
    generations = generate(model, prompts, max_new_tokens=max_new_tokens,
                           stop_token_ids=stop_token_ids_for(tokenizer, model_dir), max_batch_size=128,
                           progress=False)
    correct: dict[str, list[str]] = {family: [] for family in FAMILIES}
    for query, example, samples in zip(queries, examples, generations):
        response = tokenizer.decode(samples[0].token_list, skip_special_tokens=True)
        if toy_tasks.task_for_family(query.family).check(example, response).correct:
            correct[query.family].append(query.id)
    return {family: tuple(ids) for family, ids in correct.items()}


# --------------------------------------------------------------------------------------------
# The pool on disk
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoolAgent:
    """One agent of a pool: a Hugging Face model directory + a cost, with its build record."""

    name: str
    path: Path
    cost: float
    level: int
    num_params: int
    heldout_correct: Mapping[str, int]
    heldout_total: Mapping[str, int]
    build_seconds: float

    @property
    def heldout_accuracy(self) -> dict[str, float]:
        return {f: self.heldout_correct[f] / self.heldout_total[f] if self.heldout_total[f] else 0.0
                for f in self.heldout_total}

    @property
    def heldout_correct_total(self) -> int:
        return sum(self.heldout_correct.values())


@dataclasses.dataclass(frozen=True)
class Pool:
    root: Path
    agents: tuple[PoolAgent, ...]  # cost order
    config: PoolConfig
    config_hash: str
    tokenizer_dir: Path
    task_dirs: Mapping[str, Path]  # task name -> directory of its {train,test}.jsonl

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.agents)

    @property
    def costs(self) -> tuple[float, ...]:
        return tuple(a.cost for a in self.agents)

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(a.path for a in self.agents)

    def agent(self, name: str) -> PoolAgent:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(f"pool {self.root} has no agent {name!r}; agents: {', '.join(self.names)}")

    def world(self) -> ToyWorld:
        return ToyWorld(self.config.world)

    def table(self) -> str:
        """Agent, params, cost, held-out accuracy per family, build time: one line per agent."""
        header = f"{'agent':<10} {'params':>9} {'cost':>5} " + " ".join(
            f"{'heldout ' + f:>17}" for f in FAMILIES) + f" {'heldout all':>17} {'build s':>8}"
        lines = [header]
        for a in self.agents:
            cells = [f"{a.heldout_correct[f]:>4}/{a.heldout_total[f]:<4} {a.heldout_accuracy[f]:>6.1%}" for f in FAMILIES]
            total = sum(a.heldout_total.values())
            overall = f"{a.heldout_correct_total:>4}/{total:<4} {a.heldout_correct_total / max(total, 1):>6.1%}"
            lines.append(f"{a.name:<10} {a.num_params:>9,} {a.cost:>5.2f} " + " ".join(f"{c:>17}" for c in cells)
                         + f" {overall:>17} {a.build_seconds:>8.1f}")
        return "\n".join(lines)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PoolError(f"{path}: not valid JSON ({err})") from err


def _read_record(directory: Path, filename: str) -> dict[str, Any] | None:
    path = directory / filename
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a damaged record marks an incomplete directory: rebuild it


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _fresh_tmp_dir(parent: Path, name: str) -> Path:
    tmp = parent / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _ensure_tokenizer(world: ToyWorld, out_dir: Path):
    tokenizer_dir = out_dir / TOKENIZER_DIR
    world_hash = _hash({"format_version": FORMAT_VERSION, "world": dataclasses.asdict(world.config)})
    record = _read_record(tokenizer_dir, TOKENIZER_RECORD_FILE)
    if record is None or record.get("world_hash") != world_hash:
        tmp = _fresh_tmp_dir(out_dir, TOKENIZER_DIR)
        build_tokenizer(world, tmp)
        _write_json_atomic(tmp / TOKENIZER_RECORD_FILE, {"world_hash": world_hash})
        _replace_dir(tmp, tokenizer_dir)
    return load_tokenizer(tokenizer_dir), tokenizer_dir


def _tokenizer_files(tokenizer_dir: Path) -> list[Path]:
    return sorted(p for p in tokenizer_dir.iterdir() if p.is_file() and p.name != TOKENIZER_RECORD_FILE)


def _write_generation_config(agent_dir: Path, tokenizer) -> None:
    """Like Qwen2.5-Instruct's: stop at <|im_end|> or <|endoftext|>, pad with <|endoftext|>."""
    from transformers import GenerationConfig

    ids = _tokenizer_ids(tokenizer)
    GenerationConfig(bos_token_id=ids["pad"], eos_token_id=[ids["eos"], ids["pad"]], pad_token_id=ids["pad"],
                     do_sample=False).save_pretrained(agent_dir)


def _build_agent(config: PoolConfig, level: int, world: ToyWorld, tokenizer, tokenizer_dir: Path, out_dir: Path,
                 *, progress: bool) -> dict[str, Any]:
    spec = config.agents[level]
    agents_dir = out_dir / AGENTS_DIR
    started = time.perf_counter()
    model, train_metrics = pretrain_agent(config, level, world, tokenizer, progress=progress)
    tmp = _fresh_tmp_dir(agents_dir, spec.name)
    qwen2.save_pretrained(model, tmp, overwrite=True)
    for path in _tokenizer_files(tokenizer_dir):
        shutil.copy2(path, tmp / path.name)
    _write_generation_config(tmp, tokenizer)
    # Score the agent as every later stage will see it: reloaded from its own directory.
    saved = qwen2.from_pretrained(tmp)
    correct = score_agent(saved, tokenizer, world, max_new_tokens=config.eval_max_new_tokens, model_dir=tmp)
    totals = {f: len(world.queries_for(HELDOUT, f)) for f in FAMILIES}
    record = {
        "fingerprint": config.agent_fingerprint(level),
        "name": spec.name,
        "level": level,
        "params": model.config.num_params,
        "heldout_correct": {f: len(ids) for f, ids in correct.items()},
        "heldout_total": totals,
        "heldout_correct_ids": {f: list(ids) for f, ids in correct.items()},
        "final_train_loss": train_metrics["loss"],
        "final_train_token_accuracy": train_metrics["token_accuracy"],
        "train_loss_curve": train_metrics["loss_curve"],
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    _write_json_atomic(tmp / AGENT_RECORD_FILE, record)
    _replace_dir(tmp, agents_dir / spec.name)
    return record


def build_pool(out_dir: str | os.PathLike, config: PoolConfig | None = None, *, progress: bool = True,
               overwrite: bool = False) -> Pool:
    """Build the pool in `out_dir` (see the module docstring), reusing whatever is already built.

    A complete pool built with the same config is returned as is; agents missing from a partial
    pool are trained. A directory holding a pool or agents of a *different* config raises
    `PoolError` unless `overwrite=True`, which rebuilds only what differs.
    """
    config = PoolConfig() if config is None else config
    out_dir = Path(out_dir)
    config_hash = config.fingerprint()
    manifest_path = out_dir / POOL_FILE
    if manifest_path.is_file():
        manifest = _read_json(manifest_path)
        if manifest.get("config_hash") == config_hash:
            try:
                return load_pool(out_dir)
            except (PoolError, FileNotFoundError) as err:
                logger.info("pool %s is incomplete (%s); rebuilding what is missing", out_dir, err)
        elif not overwrite:
            raise PoolError(f"{manifest_path}: built with config {manifest.get('config_hash')}, not {config_hash}; "
                            "use another output directory or pass overwrite=True (--overwrite)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / AGENTS_DIR).mkdir(exist_ok=True)
    world = ToyWorld(config.world)
    tokenizer, tokenizer_dir = _ensure_tokenizer(world, out_dir)
    toy_tasks.write_task_files(world, out_dir / TASKS_DIR)

    records = []
    for level, spec in enumerate(config.agents):
        agent_dir = out_dir / AGENTS_DIR / spec.name
        record = _read_record(agent_dir, AGENT_RECORD_FILE)
        if record is not None and record.get("fingerprint") == config.agent_fingerprint(level):
            logger.info("agent %s: reusing %s", spec.name, agent_dir)
        else:
            if record is not None and not overwrite:
                raise PoolError(f"{agent_dir}: holds agent built with another config (fingerprint "
                                f"{record.get('fingerprint')}, expected {config.agent_fingerprint(level)}); "
                                "use another output directory or pass overwrite=True (--overwrite)")
            logger.info("agent %s: building (level %d of %d)", spec.name, level, len(config.agents))
            record = _build_agent(config, level, world, tokenizer, tokenizer_dir, out_dir, progress=progress)
        records.append(record)

    params = [r["params"] for r in records]
    if any(b <= a for a, b in zip(params, params[1:])):
        raise PoolError(f"PoolConfig.agents: parameter counts {params} must increase strictly along the ladder")
    manifest = {
        "format_version": FORMAT_VERSION,
        "config_hash": config_hash,
        "config": config.to_dict(),
        "world": dataclasses.asdict(config.world),
        "tokenizer": TOKENIZER_DIR,
        "tasks": {name: f"{TASKS_DIR}/{name}" for name in toy_tasks.FAMILY_OF_TASK},
        "agents": [
            {"name": r["name"], "path": f"{AGENTS_DIR}/{r['name']}", "cost": cost, "level": r["level"],
             "params": r["params"],
             "heldout_accuracy": {f: r["heldout_correct"][f] / r["heldout_total"][f] if r["heldout_total"][f] else 0.0
                                  for f in FAMILIES},
             "heldout_correct": r["heldout_correct"], "heldout_total": r["heldout_total"],
             "build_seconds": r["build_seconds"]}
            for r, cost in zip(records, config.agent_costs)
        ],
    }
    _write_json_atomic(manifest_path, manifest)
    return load_pool(out_dir)


def load_pool(out_dir: str | os.PathLike) -> Pool:
    """Read `out_dir/pool.json` and check every agent directory it names is complete."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / POOL_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no pool here; build one with "
                                f"`python -m disrouter_jax.toy build --out {out_dir}`")
    manifest = _read_json(manifest_path)
    try:
        config = PoolConfig.from_dict(manifest["config"])
        agents = []
        for entry in manifest["agents"]:
            path = out_dir / entry["path"]
            for required in ("config.json", "model.safetensors", "tokenizer.json", AGENT_RECORD_FILE):
                if not (path / required).is_file():
                    raise PoolError(f"{manifest_path}: agent {entry['name']!r} is incomplete: {path / required} "
                                    "is missing (rerun the build to restore it)")
            agents.append(PoolAgent(
                name=entry["name"], path=path, cost=float(entry["cost"]), level=int(entry["level"]),
                num_params=int(entry["params"]), heldout_correct=dict(entry["heldout_correct"]),
                heldout_total=dict(entry["heldout_total"]), build_seconds=float(entry["build_seconds"])))
        task_dirs = {name: out_dir / rel for name, rel in manifest["tasks"].items()}
        tokenizer_dir = out_dir / manifest["tokenizer"]
        config_hash = manifest["config_hash"]
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, PoolError):
            raise
        raise PoolError(f"{manifest_path}: malformed pool manifest ({type(err).__name__}: {err})") from err
    return Pool(root=out_dir, agents=tuple(agents), config=config, config_hash=config_hash,
                tokenizer_dir=tokenizer_dir, task_dirs=task_dirs)
