"""Per-query features for the central classifier router: mean-pooled hidden states of a frozen model.

Like the paper's BERT/LLM-based assessors, the router reads the query only (not any answer): the
plain prompt goes through a frozen small model (by default the smallest agent's *base*, untrained
checkpoint) and its decoder output before the final norm (``model.hidden_states``) is averaged over
the prompt's real tokens. Batches are padded to a fixed size and prompt lengths rounded to the
generation buckets, so a dataset compiles one program per length bucket.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from disrouter_jax.generation import BucketConfig


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _mean_pooled(graphdef, state, ids_bt, mask_bt):
    model = nnx.merge(graphdef, state)
    hidden_btd = model.hidden_states(ids_bt, attention_mask_bt=mask_bt).astype(jnp.float32)
    weights_bt = mask_bt.astype(jnp.float32)
    summed_bd = jnp.einsum("btd,bt->bd", hidden_btd, weights_bt)
    return summed_bd / jnp.maximum(weights_bt.sum(axis=1, keepdims=True), 1.0)


def mean_pooled_hidden_states(model, prompts: Sequence[Sequence[int]], *, batch_size: int = 32,
                              buckets: BucketConfig = BucketConfig()) -> np.ndarray:
    """``[len(prompts), hidden_size]`` float32: each prompt's mean hidden state (left-padded)."""
    if batch_size < 1:
        raise ValueError(f"mean_pooled_hidden_states: batch_size must be >= 1, got {batch_size}")
    prompts = [np.asarray(p, np.int32) for p in prompts]
    if any(p.ndim != 1 or p.size == 0 for p in prompts):
        raise ValueError("mean_pooled_hidden_states: every prompt must be a non-empty 1-D token sequence")
    out = np.zeros((len(prompts), model.config.hidden_size), np.float32)
    if not prompts:
        return out
    graphdef, state = nnx.split(model)
    # Longest first, so a batch holds similar lengths and pads little.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        length = buckets.prompt_bucket(max(len(prompts[i]) for i in chunk))
        ids_bt = np.zeros((batch_size, length), np.int32)
        mask_bt = np.zeros((batch_size, length), np.bool_)
        mask_bt[len(chunk):, -1] = True  # padding rows: one dummy token, result dropped
        for row, i in enumerate(chunk):
            ids_bt[row, length - len(prompts[i]):] = prompts[i]
            mask_bt[row, length - len(prompts[i]):] = True
        pooled_bd = np.asarray(jax.device_get(_mean_pooled(graphdef, state, ids_bt, mask_bt)))
        out[chunk] = pooled_bd[: len(chunk)]
    return out
