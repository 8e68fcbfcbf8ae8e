"""DiSRouter in JAX: distributed self-routing over a cascade of Qwen2.5 agents."""

__version__ = "0.1.0"
