"""The supported model families and how a checkpoint's config.json picks one.

A family is a ``ModelConfig`` subclass (one module here): its switches, its config.json reader
and writer, and its HF tensor table. Everything downstream (loading, export, generation,
training, LoRA, the cascade) takes any of them through the one decoder (``models/decoder.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from disrouter_jax.models.config import ConfigError, ModelConfig, read_config_json
from disrouter_jax.models.families.llama import LlamaConfig
from disrouter_jax.models.families.mistral import MistralConfig
from disrouter_jax.models.families.qwen2 import Qwen2Config
from disrouter_jax.models.families.qwen3 import Qwen3Config

FAMILIES: dict[str, type[ModelConfig]] = {
    cls.family: cls for cls in (Qwen2Config, Qwen3Config, LlamaConfig, MistralConfig)
}


def supported() -> str:
    """``qwen2 (Qwen2ForCausalLM), ...``: for error messages."""
    return ", ".join(f"{name} ({cls.architecture})" for name, cls in FAMILIES.items())


def config_class(family: str) -> type[ModelConfig]:
    if family not in FAMILIES:
        raise ConfigError(f"model family {family!r} is not supported; supported: {supported()}")
    return FAMILIES[family]


def make_config(family: str, **fields: Any) -> ModelConfig:
    """A config of ``family`` from its fields (``ModelConfig``'s), e.g. to build a new agent:
    ``make_config("llama", vocab_size=..., hidden_size=..., ...)``."""
    cls = config_class(family)
    try:
        return cls(**fields)
    except TypeError as err:  # an unknown or missing field
        raise ConfigError(f"{cls.__name__}: {err}") from None


def config_from_hf_dict(hf: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """The family named by ``model_type`` (else by ``architectures``), parsed by that family."""
    model_type = hf.get("model_type")
    architectures = list(hf.get("architectures") or [])
    if model_type is not None:
        cls = FAMILIES.get(model_type)
    else:
        cls = next((c for c in FAMILIES.values() if c.architecture in architectures), None)
    if cls is None:
        raise ConfigError(f"{source}: model_type={model_type!r} (architectures={architectures}) is not a "
                          f"supported family; supported: {supported()}")
    if architectures and cls.architecture not in architectures:
        raise ConfigError(f"{source}: architectures={architectures} is not supported for model_type="
                          f"{cls.family!r} (only {cls.architecture}, the causal LM)")
    return cls.from_hf_dict(hf, source=source)


def config_from_json(path: str | Path) -> ModelConfig:
    return config_from_hf_dict(read_config_json(path), source=str(path))


__all__ = ["FAMILIES", "LlamaConfig", "MistralConfig", "Qwen2Config", "Qwen3Config", "config_class",
           "config_from_hf_dict", "config_from_json", "make_config", "supported"]
