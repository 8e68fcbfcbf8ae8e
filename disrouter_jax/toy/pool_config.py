"""Configuration of a toy agent pool: the world, the agent ladder, pre-training knobs, costs.

`PoolConfig()` is the default 5-agent pool, `PoolConfig.reduced()` a 3-agent one for unit tests;
`mixed=True` makes either a mixed pool (`mixed_agents`: its second agent a Llama with a Llama-3
tokenizer). Hashes of the config (`fingerprint`, `agent_fingerprint`) decide what a rebuild may
reuse.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from disrouter_jax.models import families
from disrouter_jax.models.config import ModelConfig
from disrouter_jax.toy.world import WorldConfig

# Bump when the build procedure changes in a way that changes the agents: old pools then stop
# matching (and are only replaced with overwrite=True).
FORMAT_VERSION = 7


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """Shape and pre-training budget of one agent. Ladder level = position in PoolConfig.agents.

    max_steps caps the memorisation phase (see `toy.pretrain`); it usually ends earlier, as soon
    as the agent recalls its facts.
    """

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_steps: int
    batch_size: int
    learning_rate: float
    num_kv_heads: int | None = None  # None: = num_heads (plain multi-head attention)
    # Model family and tokenizer dialect (`toy.tokenizer.DIALECTS`). At their defaults these three
    # fields are left out of `to_dict`, so the default pools' hashes and files stay what they were.
    family: str = "qwen2"
    dialect: str = "chatml"
    tie_word_embeddings: bool = True

    def __post_init__(self):
        def fail(field: str, requirement: str):
            raise ValueError(f"AgentSpec({self.name!r}).{field}={getattr(self, field)!r}: {requirement}")

        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name) or self.name[0] == ".":
            fail("name", "must be a non-empty directory name of letters, digits, '-', '_', '.'")
        for field in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_steps", "batch_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(field, "must be an int >= 1")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            fail("hidden_size", f"must split into num_heads={self.num_heads} heads of even size")
        if self.num_kv_heads is not None and (self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads):
            fail("num_kv_heads", f"must divide num_heads={self.num_heads}")
        if not self.learning_rate > 0:
            fail("learning_rate", "must be > 0")
        if self.family not in families.FAMILIES:
            fail("family", f"must be one of {sorted(families.FAMILIES)}")
        if self.dialect not in TOKENIZER_DIALECTS:
            fail("dialect", f"must be one of {TOKENIZER_DIALECTS}")
        if not isinstance(self.tie_word_embeddings, bool):
            fail("tie_word_embeddings", "must be a bool")

    def to_dict(self) -> dict[str, Any]:
        """The spec as hashed and written to pool.json: the family fields only where they differ
        from the defaults (a default agent serialises exactly as before they existed)."""
        out = dataclasses.asdict(self)
        for field, default in _FAMILY_FIELD_DEFAULTS.items():
            if out[field] == default:
                del out[field]
        return out

    def model_config(self, vocab_size: int, *, eos_token_id: int, bos_token_id: int | None,
                     rope_theta: float, max_position_embeddings: int) -> ModelConfig:
        return families.make_config(
            self.family,
            vocab_size=vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_layers=self.num_layers, num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads or self.num_heads, head_dim=self.hidden_size // self.num_heads,
            rope_theta=rope_theta, tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=max_position_embeddings,
            bos_token_id=bos_token_id, eos_token_id=eos_token_id)


# Names of `toy.tokenizer.DIALECTS` (not imported: this module stays free of tokenizers).
TOKENIZER_DIALECTS = ("chatml", "llama3")
_FAMILY_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(AgentSpec)
                          if f.name in ("family", "dialect", "tie_word_embeddings")}


def default_costs(num_agents: int) -> tuple[float, ...]:
    """The paper's costs: evenly spaced from 0.1 to 0.9 (a single agent costs 0.1)."""
    if num_agents == 1:
        return (0.1,)
    return tuple(round(float(c), 6) for c in np.linspace(0.1, 0.9, num_agents))


# Default ladder: widths and depths grow together, sized so the whole build takes a few
# CPU-minutes. An agent trains until it recalls its facts and counts every length it was taught
# (see `toy.pretrain`); max_steps only bounds a run that does not get there.
_DEFAULT_AGENTS = (
    AgentSpec("toy-xs", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=96,
              max_steps=4000, batch_size=256, learning_rate=1e-2),
    AgentSpec("toy-s", hidden_size=40, num_layers=2, num_heads=2, intermediate_size=112,
              max_steps=4000, batch_size=256, learning_rate=1e-2),
    AgentSpec("toy-m", hidden_size=48, num_layers=2, num_heads=4, intermediate_size=128,
              max_steps=4000, batch_size=256, learning_rate=1e-2),
    AgentSpec("toy-l", hidden_size=56, num_layers=2, num_heads=4, intermediate_size=160,
              max_steps=4000, batch_size=256, learning_rate=1e-2),
    AgentSpec("toy-xl", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=176,
              max_steps=4000, batch_size=256, learning_rate=1e-2),
)

_REDUCED_AGENTS = (
    AgentSpec("toy-xs", hidden_size=24, num_layers=2, num_heads=2, intermediate_size=64,
              max_steps=2000, batch_size=128, learning_rate=1e-2),
    AgentSpec("toy-s", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=96,
              max_steps=2000, batch_size=128, learning_rate=1e-2),
    AgentSpec("toy-m", hidden_size=48, num_layers=2, num_heads=4, intermediate_size=128,
              max_steps=2000, batch_size=128, learning_rate=1e-2),
)


# The agent of a mixed pool that is of another family: the second one, so that it is trained
# (the last agent never is) and the cascade passes a query across families both ways.
MIXED_LEVEL = 1


def mixed_agents(agents: tuple[AgentSpec, ...], *, tie_word_embeddings: bool) -> tuple[AgentSpec, ...]:
    """`agents` with agent MIXED_LEVEL a Llama (no q/k/v biases) with a Llama-3 tokenizer, same sizes.

    tie_word_embeddings: untied as in Llama 3.1 8B where the ladder allows (parameter counts
    must still increase), tied as in Llama 3.2 1B/3B where an untied head would outgrow the next
    agent.
    """
    if len(agents) <= MIXED_LEVEL:
        raise ValueError(f"mixed_agents: needs more than {MIXED_LEVEL} agents, got {len(agents)}")
    other = dataclasses.replace(agents[MIXED_LEVEL], family="llama", dialect="llama3",
                                tie_word_embeddings=tie_word_embeddings)
    return agents[:MIXED_LEVEL] + (other,) + agents[MIXED_LEVEL + 1:]


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """Everything a pool build depends on.

    Fields:
      world: the toy world (its seed included).
      agents: the ladder, smallest (cheapest) first; parameter counts must increase strictly.
      seed: model initialisation and batch order.
      costs: one per agent, strictly increasing; None = `default_costs(len(agents))`.
      knowledge_fraction: share of each batch drawn from the agent's facts (the rest from its
        practice sequences).
      scenario_every, scenario_batch_size: every scenario_every-th step (0 = never) trains on a
        batch of scenario_batch_size examples prompted with a scenario system message (alpha in
        SUPPORTED_ALPHAS: the prompt later stages use) and still answered plainly, so that agents,
        like an instruct model, answer the same with or without the routing instructions. The loss
        covers the whole row, so they read the refusal phrase as part of the instructions (a real
        instruct model can say "I don't know!"); they never *give* it: when to give it is what
        self-awareness training teaches.
      recall_target, check_every: training stops at the first check (every check_every steps)
        where the agent recalls at least recall_target of its cleanly stated facts (teacher-forced
        greedy) under the plain prompt and, with scenario batches, under a scenario prompt too,
        and reverses recall_target of fresh sequences of each length it was taught; else at the
        agent's max_steps.
      warmup_steps, weight_decay, adam_b2, max_grad_norm: AdamW with linear warm-up then a
        constant learning rate. Adam's b2=0.95 (not 0.999) is what lets the agents leave the
        plateau reliably at these learning rates.
      eval_max_new_tokens: generation budget when scoring held-out queries (answers are short).
      rope_theta, max_position_embeddings: written into each agent's config.json.
    """

    world: WorldConfig = WorldConfig()
    agents: tuple[AgentSpec, ...] = _DEFAULT_AGENTS
    seed: int = 0
    costs: tuple[float, ...] | None = None
    knowledge_fraction: float = 0.85
    scenario_every: int = 4
    scenario_batch_size: int = 48
    recall_target: float = 0.95
    check_every: int = 50
    warmup_steps: int = 20
    weight_decay: float = 0.0
    adam_b2: float = 0.95
    max_grad_norm: float = 1.0
    eval_max_new_tokens: int = 16
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
        for field in ("knowledge_fraction", "recall_target"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                fail(field, "must lie in [0, 1]")
        for field, minimum in (("check_every", 1), ("scenario_every", 0), ("scenario_batch_size", 1),
                               ("warmup_steps", 0), ("eval_max_new_tokens", 1)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                fail(field, f"must be an int >= {minimum}")
        if not 0.0 <= self.adam_b2 < 1.0:
            fail("adam_b2", "must lie in [0, 1)")

    @classmethod
    def reduced(cls, seed: int = 0, *, mixed: bool = False) -> "PoolConfig":
        """3 small agents on `WorldConfig.reduced()`, for tests; `mixed`: toy-s an untied Llama
        (65k parameters with the Llama-3 vocabulary, below toy-m's 85k)."""
        agents = mixed_agents(_REDUCED_AGENTS, tie_word_embeddings=False) if mixed else _REDUCED_AGENTS
        return cls(world=WorldConfig.reduced(seed=seed), agents=agents, seed=seed, scenario_batch_size=32)

    @classmethod
    def default(cls, seed: int = 0, *, mixed: bool = False) -> "PoolConfig":
        """The default pool with `seed` as both the world's and the pool's seed; `mixed`: toy-s a
        tied Llama (untied, its 151k parameters would pass toy-m's 122k)."""
        agents = mixed_agents(_DEFAULT_AGENTS, tie_word_embeddings=True) if mixed else _DEFAULT_AGENTS
        return cls(world=dataclasses.replace(cls().world, seed=seed), agents=agents, seed=seed)

    @property
    def is_mixed(self) -> bool:
        """Whether any agent differs from the default family or tokenizer dialect."""
        return any(a.family != "qwen2" or a.dialect != "chatml" for a in self.agents)

    @property
    def agent_costs(self) -> tuple[float, ...]:
        return tuple(self.costs) if self.costs is not None else default_costs(len(self.agents))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["agents"] = [a.to_dict() for a in self.agents]  # the family fields only where not default
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PoolConfig":
        data = dict(data)
        world = world_config_from_dict(data.pop("world"))
        agents = tuple(AgentSpec(**a) for a in data.pop("agents"))
        costs = data.pop("costs", None)
        return cls(world=world, agents=agents, costs=None if costs is None else tuple(costs), **data)

    def fingerprint(self) -> str:
        """Hash of the whole config: a complete pool is reused only under the same hash."""
        return stable_hash({"format_version": FORMAT_VERSION, "config": self.to_dict()})

    def agent_fingerprint(self, level: int) -> str:
        """Hash of what one agent's weights depend on (costs and the other agents excluded)."""
        knobs = {k: v for k, v in self.to_dict().items() if k not in ("agents", "costs", "world")}
        return stable_hash({"format_version": FORMAT_VERSION, "world": dataclasses.asdict(self.world),
                            "agent": self.agents[level].to_dict(), "level": level,
                            "num_levels": len(self.agents), "knobs": knobs})


def world_config_from_dict(data: Mapping[str, Any]) -> WorldConfig:
    fields = {f.name for f in dataclasses.fields(WorldConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"world config: unknown field(s) {unknown}")
    return WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def seed_for(*parts: int) -> int:
    """A 32-bit seed derived from integers (pool seed, level, stream tag)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
