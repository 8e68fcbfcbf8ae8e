"""The agent contract: a Hugging Face model directory + a cost (+ optional placement).

Qwen2.5, Qwen3, Llama and Mistral agents and toy agents are the same thing here: the directory's
config.json picks the model family, and the agent's own tokenizer and chat template render its
prompts and read its replies (so a pool may mix families and tokenizers). Everything that talks to
an agent (labelling, SFT, RL, the cascade) builds prompts and reads replies through this module, so
the prompt an agent is trained on is byte for byte the prompt it is evaluated on.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from disrouter_jax import sharding as sharding_lib
from disrouter_jax.errors import SetupError
from disrouter_jax.generation import chat_prompt_ids, stop_token_ids_for
from disrouter_jax.models import hf_io
from disrouter_jax.models.decoder import Decoder
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.registry import get_task

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """One agent of the cascade.

    ``devices``: indices into ``jax.devices()`` this agent runs on (its own sub-mesh), or ``None``
    for the shared mesh. ``mesh``: axis sizes of its sub-mesh (default: all its devices on fsdp).
    """

    name: str
    path: str
    cost: float
    devices: tuple[int, ...] | None = None
    mesh: tuple[tuple[str, int], ...] | None = None

    @classmethod
    def from_dict(cls, d, where: str = "pool.agents") -> "AgentSpec":
        d = dict(d)
        missing = {"name", "path", "cost"} - set(d)
        if missing:
            raise ValueError(f"{where}: agent {d} lacks {sorted(missing)}")
        devices = d.get("devices")
        mesh = d.get("mesh")
        return cls(
            name=str(d["name"]),
            path=str(d["path"]),
            cost=float(d["cost"]),
            devices=None if devices is None else tuple(int(i) for i in devices),
            mesh=None if mesh is None else tuple(sorted(dict(mesh).items())),
        )

    def to_dict(self) -> dict:
        out = {"name": self.name, "path": self.path, "cost": self.cost}
        if self.devices is not None:
            out["devices"] = list(self.devices)
        if self.mesh is not None:
            out["mesh"] = dict(self.mesh)
        return out

    def sub_mesh(self, default: jax.sharding.Mesh | None) -> jax.sharding.Mesh | None:
        if self.devices is None:
            return default
        all_devices = jax.devices()
        bad = [i for i in self.devices if not 0 <= i < len(all_devices)]
        if bad:
            raise ValueError(f"agent {self.name}: devices {bad} do not exist ({len(all_devices)} available)")
        sizes = dict(self.mesh) if self.mesh else {"data": 1, "fsdp": -1, "tensor": 1}
        return sharding_lib.make_mesh(sizes, devices=[all_devices[i] for i in self.devices])


@dataclasses.dataclass
class Agent:
    """A loaded agent: model, its own tokenizer and the stop tokens that end its turn."""

    spec: AgentSpec
    model: Decoder
    tokenizer: object
    stop_token_ids: tuple[int, ...]
    mesh: jax.sharding.Mesh | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cost(self) -> float:
        return self.spec.cost

    @property
    def family(self) -> str:
        """The model family (``qwen2``, ``qwen3``, ``llama``, ``mistral``) from its config.json."""
        return self.model.config.family

    def messages(self, example: Example, alpha: float | None) -> list[dict[str, str]]:
        return get_task(example.task).messages(example, alpha)

    def prompt_ids(self, example: Example, alpha: float | None) -> list[int]:
        return chat_prompt_ids(self.tokenizer, self.messages(example, alpha))

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode([int(t) for t in tokens], skip_special_tokens=True)

    def encode_response(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def check_chat_tokenizer(tokenizer, where) -> None:
    """An agent's prompts are rendered by its own chat template: without one (a base model's
    tokenizer) nothing it is trained or evaluated on can be built."""
    if not getattr(tokenizer, "chat_template", None):
        raise SetupError(f"{where}: the tokenizer has no chat template (no chat_template in tokenizer_config.json, "
                         "no chat_template.jinja); agents must be chat models, e.g. Qwen/Qwen2.5-*-Instruct")


def load_agent(
    spec: AgentSpec,
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    path: str | os.PathLike | None = None,
) -> Agent:
    """Loads ``spec`` (or the weights at ``path``, e.g. a trained export) onto its (sub-)mesh."""
    ckpt_dir = hf_io.resolve_checkpoint_dir(path or spec.path)
    agent_mesh = spec.sub_mesh(mesh)
    model = hf_io.from_pretrained(
        ckpt_dir,
        dtype=DTYPES[dtype],
        param_dtype=DTYPES[param_dtype or dtype],
        mesh=agent_mesh,
    )
    tokenizer = load_tokenizer(ckpt_dir)
    check_chat_tokenizer(tokenizer, ckpt_dir)
    stop_ids = stop_token_ids_for(tokenizer, ckpt_dir)
    return Agent(spec, model, tokenizer, stop_ids, agent_mesh)
