"""The trained cascade as an OpenAI-compatible chat-completions server (``python -m disrouter_jax.serve``).

config (ServeConfig) · protocol (the wire format) · stage (one agent's batch) · streaming (text as
tokens come) · batcher (dynamic batching through the cascade) · service (requests <-> jobs <->
replies) · metrics (Prometheus) · app (FastAPI).
"""
