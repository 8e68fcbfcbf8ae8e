"""Qwen2 model configuration, parsed from (and written back to) Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")

    @property
    def num_params(self) -> int:
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = d * q + q + 2 * (d * kv + kv) + q * d
        layer = attention + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + self.num_layers * layer + d + head

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], *, source: str = "config.json") -> "Qwen2Config":
        """Parses a Hugging Face Qwen2 config; settings we do not implement raise ``ValueError``."""

        def fail(msg: str):
            raise ValueError(f"{source}: {msg}")

        model_type = hf.get("model_type", "qwen2")
        if model_type != "qwen2":
            fail(f"model_type={model_type!r} is not supported (only 'qwen2')")
        if hf.get("hidden_act", "silu") != "silu":
            fail(f"hidden_act={hf['hidden_act']!r} is not supported (only 'silu')")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads"):
            if key not in hf:
                fail(f"missing required field {key!r}")
        layer_types = hf.get("layer_types") or []
        if hf.get("use_sliding_window", False) or "sliding_attention" in layer_types:
            fail(
                "sliding-window attention is enabled (use_sliding_window / layer_types), which "
                "this implementation does not compute; Qwen2.5 releases ship it disabled"
            )
        rope_theta = _parse_rope(hf, fail)
        num_heads = int(hf["num_attention_heads"])
        eos = hf.get("eos_token_id")
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // num_heads),
            rope_theta=rope_theta,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        )

    @classmethod
    def from_json(cls, path: str | Path) -> "Qwen2Config":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config.json not found")
        try:
            hf = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        return cls.from_hf_dict(hf, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json that ``transformers`` reads as this exact architecture."""
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        }


def _parse_rope(hf: dict[str, Any], fail) -> float:
    """Reads rope theta from ``rope_parameters`` (transformers 5) or legacy ``rope_theta``."""
    params = hf.get("rope_parameters")
    legacy_scaling = hf.get("rope_scaling")
    if params is not None:
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            fail(f"rope_parameters.rope_type={rope_type!r} is not supported (only 'default')")
        if "rope_theta" in params:
            return float(params["rope_theta"])
    if legacy_scaling:
        rope_type = legacy_scaling.get("rope_type", legacy_scaling.get("type"))
        if rope_type not in (None, "default"):
            fail(f"rope_scaling type {rope_type!r} is not supported (only unscaled RoPE)")
    return float(hf.get("rope_theta", 10_000.0))
