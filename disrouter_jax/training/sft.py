"""Jitted supervised fine-tuning step and sequence scoring.

Batch layout (shared with the RL step): next-token layout, right-padded, as produced by
``selfaware.data.bucket_pad_batch``::

    input_ids_bt[b, t] predicts targets_bt[b, t] (= the sequence shifted by one)
    loss_mask_bt[b, t] = 1 where targets_bt[b, t] is trained on (response tokens and end-of-turn
                         for SFT; every real token for plain language-model pre-training), 0 on
                         prompt and padding positions. A value other than 1 weighs that token
                         (e.g. scenario-weighted refusal targets); the loss is the weighted mean.

Each row starts at position 0; with causal attention, right padding cannot influence real tokens,
so no attention mask is needed. An optional ``attention_mask_bt`` (1 on real tokens) supports
left-padded rows too: positions then count from each row's first real token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from disrouter_jax.generation.sampling import token_logprobs
from disrouter_jax.models.decoder import default_positions
from disrouter_jax.selfaware import rewards
from disrouter_jax.training.optim import OptimConfig
from disrouter_jax.training.state import build_train_step, shard_batch


@dataclasses.dataclass(frozen=True)
class TokenBatch:
    """A padded next-token batch (see the module docstring). Arrays may be numpy or jax."""

    input_ids_bt: jax.Array
    targets_bt: jax.Array
    loss_mask_bt: jax.Array
    attention_mask_bt: jax.Array | None = None

    def validate(self) -> None:
        """Raises ValueError naming the field when shapes disagree (called by the step on the host;
        not in ``__post_init__`` because jax rebuilds the dataclass with non-array leaves)."""
        check_same_shape(self, ("input_ids_bt", "targets_bt", "loss_mask_bt", "attention_mask_bt"))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_padded(cls, padded) -> "TokenBatch":
        """From ``selfaware.data.PaddedSFTBatch`` (or anything with the same three fields)."""
        return cls(
            input_ids_bt=np.asarray(padded.input_ids_bt, np.int32),
            targets_bt=np.asarray(padded.targets_bt, np.int32),
            loss_mask_bt=np.asarray(padded.loss_mask_bt, np.float32),
        )

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]], *, pad_id: int, length: int | None = None) -> "TokenBatch":
        """Full-sequence language-model batch: every next token of every row is trained on.

        ``length`` is the padded width T (default: longest sequence - 1); a longer sequence is
        an error, never silently truncated.
        """
        lengths = [len(s) for s in sequences]
        if not sequences or min(lengths) < 2:
            raise ValueError(f"TokenBatch.from_sequences: need >= 1 sequence of >= 2 tokens, got lengths {lengths}")
        width = max(lengths) - 1 if length is None else int(length)
        if max(lengths) - 1 > width:
            raise ValueError(f"TokenBatch.from_sequences: a sequence of {max(lengths)} tokens exceeds length={width} + 1")
        ids = np.full((len(sequences), width), pad_id, np.int32)
        targets = np.full((len(sequences), width), pad_id, np.int32)
        mask = np.zeros((len(sequences), width), np.float32)
        for row, seq in enumerate(sequences):
            seq = np.asarray(seq, np.int32)
            n = seq.size - 1
            ids[row, :n], targets[row, :n], mask[row, :n] = seq[:-1], seq[1:], 1.0
        return cls(ids, targets, mask)


def check_same_shape(batch, fields: Sequence[str]) -> None:
    shapes = {f: np.shape(getattr(batch, f)) for f in fields if getattr(batch, f) is not None}
    reference = shapes[fields[0]]
    if len(reference) != 2:
        raise ValueError(f"{type(batch).__name__}.{fields[0]} must be [B, T], got shape {reference}")
    bad = {f: s for f, s in shapes.items() if s != reference}
    if bad:
        raise ValueError(f"{type(batch).__name__}: fields {bad} do not match {fields[0]} shape {reference}")


jax.tree_util.register_dataclass(
    TokenBatch, data_fields=["input_ids_bt", "targets_bt", "loss_mask_bt", "attention_mask_bt"], meta_fields=[]
)


def forward_logits(model, batch) -> jax.Array:
    """float32 logits [B, T, V] for a ``TokenBatch``-like batch."""
    if batch.attention_mask_bt is None:
        return model(batch.input_ids_bt)
    mask = batch.attention_mask_bt
    return model(batch.input_ids_bt, default_positions(mask), mask)


def safe_targets(batch):
    # Masked-out targets may hold anything (e.g. -1); gather id 0 there instead.
    return jnp.where(batch.loss_mask_bt > 0, batch.targets_bt, 0)


def sft_loss(model, batch: TokenBatch):
    """(mean masked CE, number of loss tokens, {"token_accuracy"}) for one (micro-)batch."""
    logits_btv = forward_logits(model, batch)
    loss, num_tokens = rewards.masked_cross_entropy(logits_btv, batch.targets_bt, batch.loss_mask_bt)
    mask = batch.loss_mask_bt.astype(jnp.float32)
    hits = rewards.greedy_hits(logits_btv, safe_targets(batch)).astype(jnp.float32)
    accuracy = jnp.sum(hits * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, num_tokens, {"token_accuracy": accuracy}


def make_sft_step(optim: OptimConfig):
    """``step(state, batch: TokenBatch) -> (state, metrics)``; metrics: loss, num_tokens,
    token_accuracy, grad_norm, lr, update_applied. Use the same ``OptimConfig`` as for the
    optimizer (schedule for ``lr``, ``num_microbatches`` for accumulation)."""
    return build_train_step(sft_loss, optim, name="sft_step", validate=TokenBatch.validate)


@nnx.jit
def _sequence_logprobs(model, batch):
    logprobs_bt = token_logprobs(forward_logits(model, batch), safe_targets(batch))
    return jnp.where(batch.loss_mask_bt > 0, logprobs_bt, 0.0)


def sequence_logprobs(model, batch) -> jax.Array:
    """log p(targets_bt[b, t]) under ``model`` ([B, T] float32, 0 where ``loss_mask_bt`` is 0).

    Jitted (one compilation per model structure and batch shape). Use it for the frozen reference
    model's log-probs in RL (``batch.replace(ref_logprobs_bt=sequence_logprobs(ref_model, batch))``)
    or to recompute the rollout policy's log-probs. Works for a ``Decoder`` of any family and its ``LoRAModel``.
    """
    return _sequence_logprobs(model, shard_batch(batch, getattr(model, "sharding", None)))
