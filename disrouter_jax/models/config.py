"""The decoder's architecture, whatever the family: one frozen dataclass and its config.json reader.

``ModelConfig`` holds the numbers every family has (sizes, RoPE, norms, head tying) and the few
switches where the families differ. A family (``models/families/``) is a subclass that fixes its
switches as class constants (``attention_bias``, ``qk_norm``), says which optional features it
accepts (``rope_scaling``, ``sliding_window``), and parses / writes its own ``config.json``. The
decoder reads only this base class, so it never asks which family it runs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

# transformers' default when a config.json gives no rope_theta (``RotaryEmbeddingConfigMixin``).
DEFAULT_ROPE_THETA = 10_000.0


class ConfigError(ValueError):
    """A config.json we cannot run; the message names the file, the field and the value."""


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """RoPE type ``llama3`` (Llama 3.1+): long wavelengths divided by ``factor``, short ones kept,
    the band between interpolated (transformers' ``_compute_llama3_parameters``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    rope_type: ClassVar[str] = "llama3"

    def __post_init__(self):
        if not self.factor > 0 or not self.high_freq_factor > self.low_freq_factor > 0:
            raise ConfigError(f"{self}: needs factor > 0 and high_freq_factor > low_freq_factor > 0")
        if self.original_max_position_embeddings < 1:
            raise ConfigError(f"{self}: original_max_position_embeddings must be >= 1")

    def to_hf_dict(self) -> dict[str, Any]:
        return {"rope_type": self.rope_type, **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of every family's config (instantiate a family: ``families.config_class(name)``)."""

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
    rope_scaling: Llama3RopeScaling | None = None
    # Each query attends to itself and the sliding_window - 1 tokens before it (None: all).
    sliding_window: int | None = None

    family: ClassVar[str] = ""
    architecture: ClassVar[str] = ""  # transformers' *ForCausalLM class
    attention_bias: ClassVar[bool] = False  # biases on the q/k/v projections
    qk_norm: ClassVar[bool] = False  # RMSNorm over head_dim on queries and keys, before RoPE
    accepts_rope_scaling: ClassVar[bool] = False
    accepts_sliding_window: ClassVar[bool] = False
    # transformers' defaults for fields a config.json may leave out, where the family's differ
    # from HfConfigReader's (e.g. Qwen3's head_dim 128, Llama's eos 2).
    hf_defaults: ClassVar[dict[str, Any]] = {}
    tensor_table: ClassVar[tuple] = ()  # tensor_table.TensorRule rows, in checkpoint file order

    def __post_init__(self):
        where = f"{type(self).__name__}"
        if not self.family:
            raise TypeError("ModelConfig is abstract: build a family's config (families.config_class)")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"{where}: num_attention_heads={self.num_heads} is not a multiple of "
                              f"num_key_value_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"{where}: head_dim={self.head_dim} must be even for rotary embeddings")
        if self.rope_scaling is not None and not self.accepts_rope_scaling:
            raise ConfigError(f"{where}: rope_scaling={self.rope_scaling} is not supported for family "
                              f"{self.family!r}")
        if self.sliding_window is not None:
            if not self.accepts_sliding_window:
                raise ConfigError(f"{where}: sliding_window={self.sliding_window} is not supported for family "
                                  f"{self.family!r}")
            if self.sliding_window < 1:
                raise ConfigError(f"{where}: sliding_window={self.sliding_window} must be >= 1")

    @property
    def num_params(self) -> int:
        d, f, v, h = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        q, kv = self.num_heads * h, self.num_kv_heads * h
        attention = d * q + 2 * d * kv + q * d
        attention += (q + 2 * kv) * self.attention_bias + 2 * h * self.qk_norm
        layer = attention + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + self.num_layers * layer + d + head

    # ------------------------------------------------------------------ config.json

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], *, source: str = "config.json") -> "ModelConfig":
        """This family's reading of a Hugging Face config; what it does not compute raises."""
        reader = HfConfigReader(hf, source)
        reader.expect_family(cls)
        return cls(**reader.common_fields(cls), **cls._family_fields(reader))

    @classmethod
    def _family_fields(cls, reader: "HfConfigReader") -> dict[str, Any]:
        """Fields beyond ``HfConfigReader.common_fields``; families override it."""
        return {}

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        return cls.from_hf_dict(read_config_json(path), source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json that ``transformers`` reads as this exact architecture."""
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope = {**self.rope_scaling.to_hf_dict(), "rope_theta": self.rope_theta}
        return {
            "architectures": [self.architecture],
            "model_type": self.family,
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
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            **self._family_hf_fields(),
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        }

    def _family_hf_fields(self) -> dict[str, Any]:
        return {}


def read_config_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config.json not found")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(hf, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(hf).__name__}")
    return hf


class HfConfigReader:
    """Reads the fields all families share from a config.json dict, failing with the file's name.

    A field left out of config.json takes transformers' default for the family
    (``ModelConfig.hf_defaults``), so it means what it means to transformers.
    """

    REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads")

    def __init__(self, hf: dict[str, Any], source: str):
        self.hf = hf
        self.source = source

    def fail(self, message: str):
        raise ConfigError(f"{self.source}: {message}")

    def get(self, key: str, default=None):
        return self.hf.get(key, default)

    def field(self, cls, key: str, default=None):
        """``key`` from config.json; when absent, the family's transformers default."""
        return self.hf[key] if key in self.hf else cls.hf_defaults.get(key, default)

    def expect_family(self, cls) -> None:
        model_type = self.hf.get("model_type") or cls.family
        if model_type != cls.family:
            self.fail(f"model_type={model_type!r} is not a {cls.family!r} config")

    def reject_if(self, condition: bool, feature: str) -> None:
        if condition:
            self.fail(f"{feature} is not supported")

    def common_fields(self, cls) -> dict[str, Any]:
        hf = self.hf
        for key in self.REQUIRED:
            if key not in hf:
                self.fail(f"missing required field {key!r}")
        if hf.get("hidden_act", "silu") != "silu":
            self.fail(f"hidden_act={hf['hidden_act']!r} is not supported (only 'silu')")
        num_heads = int(hf["num_attention_heads"])
        field = lambda key, default=None: self.field(cls, key, default)  # noqa: E731
        eos = field("eos_token_id")
        fields = dict(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(field("num_key_value_heads") or num_heads),
            head_dim=int(field("head_dim") or int(hf["hidden_size"]) // num_heads),
            rms_norm_eps=float(field("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(field("tie_word_embeddings", False)),
            max_position_embeddings=int(field("max_position_embeddings", 32768)),
            bos_token_id=field("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        )
        fields["rope_theta"], fields["rope_scaling"] = self.rope(cls, fields["max_position_embeddings"])
        return fields

    def rope(self, cls, max_position_embeddings: int) -> tuple[float, Llama3RopeScaling | None]:
        """(theta, scaling) as transformers 5 standardises them: a legacy ``rope_scaling`` dict wins
        over ``rope_parameters``; theta from there, else the top-level ``rope_theta``."""
        hf = self.hf
        params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
        if not isinstance(params, dict):
            self.fail(f"rope_parameters={params!r} must be an object")
        if any(isinstance(v, dict) for v in params.values()):
            self.fail("per-layer-type rope_parameters are not supported")
        theta = float(params.get("rope_theta") or hf.get("rope_theta") or DEFAULT_ROPE_THETA)
        factor = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        if factor not in (None, 1, 1.0):
            self.fail(f"partial_rotary_factor={factor!r} is not supported (only 1.0)")
        rope_type = params.get("rope_type", params.get("type", "default"))
        supported = ("default", Llama3RopeScaling.rope_type) if cls.accepts_rope_scaling else ("default",)
        if rope_type not in supported:
            self.fail(f"RoPE type {rope_type!r} is not supported for {cls.family!r} (supported: {supported})")
        if rope_type == "default":
            return theta, None
        try:
            scaling = Llama3RopeScaling(
                factor=float(params["factor"]), low_freq_factor=float(params["low_freq_factor"]),
                high_freq_factor=float(params["high_freq_factor"]),
                original_max_position_embeddings=int(
                    params.get("original_max_position_embeddings")
                    or hf.get("original_max_position_embeddings") or max_position_embeddings))
        except KeyError as err:
            self.fail(f"RoPE type 'llama3' needs {err.args[0]!r} in rope_parameters / rope_scaling")
        except ConfigError as err:
            self.fail(str(err))
        return theta, scaling

