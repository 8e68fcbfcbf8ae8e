"""google-tunix (Flax NNX Qwen2 + its ``Sampler``) as a contender, on the same checkpoint.

Optional: ``pip install -e .[bench]`` (the ``google-tunix`` package). ``available()`` says whether
it imports, ``INSTALL`` how to get it. Each benchmark runs it in a process of its own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

INSTALL = ("tunix is not installed: pip install -e '.[bench]' (the google-tunix package; "
           "if pip wants to downgrade transformers, pip install --no-deps google-tunix "
           "google-metrax jaxtyping einops perfetto)")


def available() -> bool:
    try:
        import tunix.generate.sampler  # noqa: F401
        import tunix.models.qwen2.params  # noqa: F401
    except ImportError:
        return False
    return True


def runnable(engines) -> list[str]:
    """``engines`` without tunix when it is not installed (saying how to install it)."""
    engines = list(engines)
    if "tunix" in engines and not available():
        print(INSTALL, file=sys.stderr)
        engines.remove("tunix")
    return engines


def load_model(ckpt: Path, dtype: str):
    """tunix's Qwen2 with the checkpoint's weights (its own safetensors loader), one device."""
    import jax.numpy as jnp
    from tunix.models.qwen2 import model as model_lib
    from tunix.models.qwen2 import params as params_lib

    hf = json.loads((Path(ckpt) / "config.json").read_text())
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    rope_theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    config = model_lib.ModelConfig(
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"], head_dim=head_dim,
        num_kv_heads=hf["num_key_value_heads"], rope_theta=int(rope_theta),
        norm_eps=hf["rms_norm_eps"], use_tied_embedding=hf.get("tie_word_embeddings", False),
        dtype=getattr(jnp, dtype), param_dtype=getattr(jnp, dtype),
    )
    return params_lib.create_model_from_safe_tensors(str(ckpt), config, mesh=None,
                                                     dtype=getattr(jnp, dtype)), config


class _IdsTokenizer:
    """Prompts travel as space-separated token ids: the sampler tokenises strings, and the
    benchmark's prompts are random ids. Id 0 is the left padding (prompts use ids >= 1) and
    there is no BOS, so the model sees exactly the other engines' ids."""

    def encode(self, text: str, **_):
        return [int(t) for t in text.split()]

    def decode(self, ids, **_):
        return " ".join(map(str, ids))

    def bos_id(self):
        return None

    def eos_id(self):
        return -1

    def pad_id(self):
        return 0


class TunixEngine:
    def __init__(self, ckpt: Path, dtype: str, cache_size: int):
        from tunix.generate import sampler as sampler_lib

        self.model, config = load_model(ckpt, dtype)
        cache = sampler_lib.CacheConfig(cache_size=cache_size, num_layers=config.num_layers,
                                        num_kv_heads=config.num_kv_heads, head_dim=config.head_dim)
        self.sampler = sampler_lib.Sampler(self.model, _IdsTokenizer(), cache)

    def run(self, prompts, max_new_tokens: int) -> list[list[int]]:
        """Greedy, exactly ``max_new_tokens`` per row (the stop id -1 is never emitted)."""
        out = self.sampler([" ".join(map(str, p)) for p in prompts], max_generation_steps=max_new_tokens,
                           eos_tokens=[-1], temperature=0.0)
        return [np.asarray(t).tolist() for t in out.tokens]


class TunixTrainer:
    """tunix's Qwen2 under one ``nnx.jit`` step as its ``PeftTrainer`` runs it (``nnx.Optimizer``
    over every ``nnx.Param``, ``nnx.value_and_grad``): forward, masked cross-entropy (SFT) or the
    clipped policy-gradient loss (RL), backward, global-norm clipping, AdamW."""

    def __init__(self, ckpt: Path, dtype: str, kind: str, batch_arrays):
        import jax
        import jax.numpy as jnp
        import optax
        from flax import nnx

        self.jax = jax
        model, _ = load_model(ckpt, dtype)
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5, weight_decay=0.0))
        self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        self.model = model
        ids, targets, mask, adv, old = (jnp.asarray(a) for a in batch_arrays)
        b, t = ids.shape
        positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), jnp.bool_)), (b, t, t))

        def loss_fn(model):
            logits, _ = model(ids, positions, None, causal)
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
            tokens = jnp.sum(mask)
            if kind == "sft":
                return -jnp.sum(logp * mask) / tokens
            ratio = jnp.exp(logp - old)
            objective = jnp.minimum(ratio * adv[:, None], jnp.clip(ratio, 0.8, 1.2) * adv[:, None])
            return -jnp.sum(objective * mask) / tokens

        @nnx.jit
        def step(model, optimizer):
            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss

        self._step = step

    def run(self, steps: int) -> float:
        for _ in range(steps):
            loss = self._step(self.model, self.optimizer)
        return float(self.jax.block_until_ready(loss))
