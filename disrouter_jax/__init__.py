"""DiSRouter in JAX: distributed self-routing over a cascade of LLM agents (Qwen2.5, Qwen3, Llama, Mistral)."""

__version__ = "0.1.0"
