"""Batched generation: jitted prefill, then a jitted ``while_loop`` decode.

Per batch of prompts (see ``buckets.plan_batches``):

1. **Prefill** (one jitted call): the left-padded prompts ``[Bp, T]`` (``T`` a length bucket) are
   written into a fresh KV cache of ``T + N`` slots (``N`` the ``max_new_tokens`` bucket). Only the
   last position's logits are computed: the prompt goes in as ``T - 1`` tokens whose logits are
   dead code (XLA drops that ``[B, T, V]`` LM-head matmul) plus the last token. With
   ``num_samples > 1`` each prompt is prefilled **once** and its cache and next-token logits are
   then repeated ``num_samples`` times along the batch.
2. **Decode** (one jitted call, the cache donated): a ``lax.while_loop`` of one-token
   ``model.extend`` steps that exits as soon as every row has finished (stop token or
   ``early_stop``) or ``max_new_tokens`` tokens were generated.

Compiled programs are cached by jax.jit, keyed on the bucketed shapes plus the static options
(the model's graphdef, sampling mode, ``early_stop`` function). ``TRACE_COUNTS`` counts traces,
i.e. compilations, per program kind.
"""

from __future__ import annotations

import collections
import itertools
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from disrouter_jax import runtime
from disrouter_jax import sharding as sharding_lib
from disrouter_jax.generation import inputs, sampling
from disrouter_jax.generation.buckets import (
    Batch,
    BucketConfig,
    Plan,
    plan_batches,
)
from disrouter_jax.generation.results import FINISH_REASONS, Generation
from disrouter_jax.models.decoder import Decoder, default_positions
from disrouter_jax.models.kv_cache import KEY_CACHE_AXES, VALUE_CACHE_AXES, KVCache, init_cache

# Incremented when a program is traced (each trace is one compilation); tests read it.
TRACE_COUNTS: collections.Counter = collections.Counter()

_RUNNING, _LENGTH, _STOP, _EARLY = 0, 1, 2, 3
_CODE_TO_REASON = {_LENGTH: "length", _STOP: "stop", _EARLY: "early_stop"}
assert set(_CODE_TO_REASON.values()) == set(FINISH_REASONS)
_PAD_ID = -1  # in the token buffer after a row finished

EarlyStop = Callable[[jax.Array, jax.Array], jax.Array]


def _batch_constrain(x, ctx: sharding_lib.ShardingContext | None):
    axes = ("batch",) + (None,) * (x.ndim - 1)
    return sharding_lib.constrain(x, axes, ctx)


def repeat_cache(cache: KVCache, repeats: int) -> KVCache:
    """Row ``r`` of the result is row ``r // repeats`` of ``cache``."""
    repeat = lambda layers: tuple(jnp.repeat(x, repeats, axis=0) for x in layers)  # noqa: E731
    return KVCache(
        repeat(cache.k_bkhs), repeat(cache.v_bksh), jnp.repeat(cache.valid_bs, repeats, axis=0), cache.end
    )


@runtime.jit(static_argnames=("graphdef", "cache_length", "samples_per_row", "cache_dtype"))
def _prefill(graphdef, state, prompt_bt, mask_bt, *, cache_length, samples_per_row, cache_dtype):
    TRACE_COUNTS["prefill"] += 1
    model = nnx.merge(graphdef, state)
    ctx = model.sharding
    batch, length = prompt_bt.shape
    cache = init_cache(model.config, batch, cache_length, cache_dtype, ctx)
    positions_bt = default_positions(mask_bt)
    if length > 1:
        # These logits are unused, so the LM head over the whole prompt is compiled away.
        _, cache = model.extend(prompt_bt[:, :-1], positions_bt[:, :-1], mask_bt[:, :-1], cache)
    logits_b1v, cache = model.extend(
        prompt_bt[:, -1:], positions_bt[:, -1:], mask_bt[:, -1:], cache
    )
    logits_bv = logits_b1v[:, 0]
    next_position_b = positions_bt[:, -1] + 1
    if samples_per_row > 1:
        cache = repeat_cache(cache, samples_per_row)
        logits_bv = jnp.repeat(logits_bv, samples_per_row, axis=0)
        next_position_b = jnp.repeat(next_position_b, samples_per_row, axis=0)
    constrain = lambda layers, axes: tuple(  # noqa: E731
        sharding_lib.constrain(x, axes, ctx) for x in layers
    )
    cache = KVCache(
        constrain(cache.k_bkhs, KEY_CACHE_AXES),
        constrain(cache.v_bksh, VALUE_CACHE_AXES),
        sharding_lib.constrain(cache.valid_bs, ("batch", "length"), ctx),
        cache.end,
    )
    return cache, _batch_constrain(logits_bv, ctx), _batch_constrain(next_position_b, ctx)


def decode_head(model):
    """The LM head as a decode loop should hold it: ``None`` (the parameters as they are) except
    for a tied head on CPU, returned as a ``[D, V]`` copy of the embedding table
    (``Decoder.tied_head_dv``).

    XLA:CPU's dot emitter multiplies by the transposed ``[V, D]`` table 3-4x slower than by a
    ``[D, V]`` matrix (mid shape, batch 16: 24 vs 6 ms per call), and the head is the largest
    matmul of a decode step; one copy per generated batch pays for itself within a step.
    """
    if not model.config.tie_word_embeddings or not runtime.on_cpu():
        return None
    return model.tied_head_dv()


class _DecodeState(NamedTuple):
    """The decode loop's carry. Row ``b`` is one decode row; the ``_bn`` buffers hold one slot per
    new token, written at ``step`` (the number of tokens generated so far)."""

    step: jax.Array
    cache: KVCache
    logits_bv: jax.Array  # what the next token is chosen from
    position_b: jax.Array  # the next token's position
    tokens_bn: jax.Array  # _PAD_ID after a row finished
    logprobs_bn: jax.Array  # temperature 1 (Generation.logprobs)
    sample_logprobs_bn: jax.Array  # at the sampling temperature (Generation.sampling_logprobs)
    num_tokens_b: jax.Array
    finish_b: jax.Array  # _RUNNING until the row finishes, then its finish code


class _DecodeOutputs(NamedTuple):
    """What one decode call returns: the finished loop state without the cache and logits (a row
    still running at the token budget is marked ``_LENGTH``); numpy arrays once on the host."""

    tokens_bn: Any
    logprobs_bn: Any
    sample_logprobs_bn: Any
    num_tokens_b: Any
    finish_b: Any


def _decode(
    graphdef, state, cache, logits_bv, next_position_b, active_b, key_index_b, sample_index_b,
    seed, temperature, top_p, stop_ids_s, max_new_tokens, stream_id,
    *, buffer_length, mode, early_stop, stream,
):
    TRACE_COUNTS["decode"] += 1
    model = nnx.merge(graphdef, state)
    ctx = model.sharding
    batch = logits_bv.shape[0]
    keys_b = None if mode.greedy else sampling.row_keys(seed, key_index_b, sample_index_b)
    head_dv = decode_head(model)  # made once, outside the loop

    def choose(logits_bv, step):
        if mode.greedy:  # temperature 0: documented as the temperature-1 log-probs
            tokens_b, logprobs_b = sampling.greedy_tokens(logits_bv)
            return tokens_b, logprobs_b, logprobs_b
        keys = None if keys_b is None else sampling.step_keys(keys_b, step)
        tokens_b = sampling.sample_tokens(logits_bv, keys, temperature, top_p, mode)
        logprobs_b = sampling.token_logprobs(logits_bv, tokens_b)
        # One more log-softmax over the vocabulary: cheap next to the LM head's matmul.
        return tokens_b, logprobs_b, sampling.token_logprobs(logits_bv / temperature, tokens_b)

    def record(loop: _DecodeState, tokens_b, logprobs_b, sample_logprobs_b) -> _DecodeState:
        step = loop.step
        running_b = loop.finish_b == _RUNNING
        write = lambda buf, x: jax.lax.dynamic_update_slice(  # noqa: E731
            buf, x[:, None].astype(buf.dtype), (0, step)
        )
        tokens_bn = write(loop.tokens_bn, jnp.where(running_b, tokens_b, _PAD_ID))
        stopped_b = running_b & jnp.isin(tokens_b, stop_ids_s)
        finish_b = jnp.where(stopped_b, _STOP, loop.finish_b)
        if early_stop is not None:
            wants_b = jnp.asarray(early_stop(tokens_bn, step + 1), jnp.bool_)
            finish_b = jnp.where(running_b & ~stopped_b & wants_b, _EARLY, finish_b)
        return loop._replace(
            step=step + 1,
            tokens_bn=tokens_bn,
            logprobs_bn=write(loop.logprobs_bn, logprobs_b),
            sample_logprobs_bn=write(loop.sample_logprobs_bn, sample_logprobs_b),
            num_tokens_b=loop.num_tokens_b + running_b.astype(jnp.int32),
            finish_b=finish_b,
        )

    loop = _DecodeState(
        step=jnp.zeros((), jnp.int32),
        cache=cache,
        logits_bv=logits_bv,
        position_b=next_position_b,
        tokens_bn=_batch_constrain(jnp.full((batch, buffer_length), _PAD_ID, jnp.int32), ctx),
        logprobs_bn=_batch_constrain(jnp.zeros((batch, buffer_length), jnp.float32), ctx),
        sample_logprobs_bn=_batch_constrain(jnp.zeros((batch, buffer_length), jnp.float32), ctx),
        num_tokens_b=jnp.zeros((batch,), jnp.int32),
        # Batch-padding rows start finished so they never keep the loop alive.
        finish_b=jnp.where(active_b, _RUNNING, _LENGTH).astype(jnp.int32),
    )

    def cond(loop: _DecodeState):
        return (loop.step < max_new_tokens) & jnp.any(loop.finish_b == _RUNNING)

    def body(loop: _DecodeState) -> _DecodeState:
        # Sample from the logits in hand, then run the model on the new token. The last
        # iteration's model step is wasted (one step per batch), but the sampler is compiled
        # once instead of twice (peeling the first token doubles its compile time).
        tokens_b, logprobs_b, sample_logprobs_b = choose(loop.logits_bv, loop.step)
        if stream:
            # Only a call with a listener pays the host round trip (stream_id -1: nobody listens),
            # so one program serves both; the callback reads the tokens, it changes nothing.
            emitted_b = jnp.where(loop.finish_b == _RUNNING, tokens_b, _PAD_ID)
            jax.lax.cond(stream_id >= 0, lambda: jax.debug.callback(_emit_tokens, stream_id, loop.step, emitted_b),
                         lambda: None)
        loop = record(loop, tokens_b, logprobs_b, sample_logprobs_b)
        logits_b1v, cache = model.extend(
            tokens_b[:, None],
            loop.position_b[:, None],
            jnp.ones((batch, 1), jnp.bool_),
            loop.cache,
            head_dv=head_dv,
        )
        return loop._replace(cache=cache, logits_bv=logits_b1v[:, 0], position_b=loop.position_b + 1)

    loop = jax.lax.while_loop(cond, body, loop)
    outputs = _DecodeOutputs(
        tokens_bn=loop.tokens_bn,
        logprobs_bn=loop.logprobs_bn,
        sample_logprobs_bn=loop.sample_logprobs_bn,
        num_tokens_b=loop.num_tokens_b,
        finish_b=jnp.where(loop.finish_b == _RUNNING, _LENGTH, loop.finish_b),
    )
    # Returning the cache lets XLA alias the donated input buffer, so the loop updates it in place.
    return outputs, loop.cache


_decode_jit = runtime.jit(
    _decode, static_argnames=("graphdef", "buffer_length", "mode", "early_stop", "stream"), donate_argnames=("cache",)
)

# Listeners of the decode loops now running with ``on_tokens`` (``generate``), by stream id.
_STREAMS: dict[int, Callable[[int, np.ndarray], None]] = {}
_STREAM_IDS = itertools.count()


def _emit_tokens(stream_id, step, tokens_b) -> None:
    listener = _STREAMS.get(int(stream_id))
    if listener is not None:
        listener(int(step), np.asarray(tokens_b))


# On CPU the faster dot backend depends on the CPU and, for a decode loop, on its number of rows
# (runtime.xla_dots_win). Other backends compile both programs alike.
def _prefill_program():
    return _prefill if runtime.xla_dots_win(None) else _prefill.default


def _decode_program(rows: int):
    return _decode_jit if runtime.xla_dots_win(rows) else _decode_jit.default


def _progress_bar(total: int, progress: bool | None):
    from tqdm.auto import tqdm

    enabled = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, desc="generate", unit="batch", disable=not enabled or total <= 1)


def generate(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_samples: int = 1,
    stop_token_ids: Sequence[int] | None = None,
    seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    max_batch_size: int = 64,
    buckets: BucketConfig = BucketConfig(),
    include_stop: bool = False,
    early_stop: EarlyStop | None = None,
    cache_dtype=None,
    progress: bool | None = None,
    key_ids: Sequence[int] | None = None,
    on_tokens: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    stream: bool | None = None,
    split: tuple | None = None,
) -> list[list[Generation]]:
    """Continues every prompt ``num_samples`` times; returns ``[prompt][sample] -> Generation``.

    ``prompts``: token-id sequences of any lengths (left-padded internally). ``temperature=0`` is
    greedy (top-k/top-p ignored); otherwise tokens are sampled from ``softmax(logits /
    temperature)`` restricted to the ``top_k`` most likely (0 = all) and to the nucleus of
    probability ``top_p`` (1 = all). Sampling is reproducible: a sample depends only on ``seed``,
    its prompt's index and its sample index (not on batching or devices). ``key_ids`` (one int in
    [0, 2**31) per prompt) replaces the prompt's index in that triple: a server gives each request
    its own seed there, so its samples do not depend on which requests share its call.

    ``num_samples``: each prompt is prefilled once and its KV cache repeated per sample.

    ``stop_token_ids``: a row finishes at the first of these it emits (default: the model config's
    ``eos_token_id``; ``()`` for none). The stop token is left out of ``Generation.tokens`` /
    ``logprobs`` unless ``include_stop=True`` (RL needs it to train the end of turn); it is always
    in ``Generation.stop_token``.

    ``Generation.logprobs`` are the chosen tokens' log-probs under the unmodified model
    (``log_softmax(logits)``, temperature 1, no top-k/top-p), the "old log-probs" of RL.
    ``Generation.sampling_logprobs`` are under ``log_softmax(logits / temperature)`` (still
    without top-k/top-p truncation; equal to ``logprobs`` when greedy).

    ``early_stop(tokens_bn, num_generated) -> bool[B]``: an optional jittable predicate called
    after every step. ``tokens_bn`` is the int32 ``[B, N]`` buffer of tokens generated so far
    (each still-running row has exactly ``num_generated`` valid entries, the rest are -1);
    rows where it returns True finish with ``finish_reason="early_stop"`` keeping the token just
    generated. It is a static argument of the compiled loop: pass the same function object each
    call to reuse the compilation.

    Batches hold at most ``max_batch_size`` decode rows. ``mesh``: shard the batch over the mesh's
    data axes (default: the mesh the model was loaded on; an unsharded model is replicated onto
    the given mesh). ``cache_dtype`` defaults to the model's compute dtype. ``progress``: tqdm bar
    over batches (default: only when stderr is a terminal).

    ``on_tokens(step, prompt_index_r, token_r)``: called from inside the decode loop after every
    step (a server streams with it), for the rows still running at that step: their prompts'
    indices and the token each emitted (a stop token included). ``stream``: compile the loop with
    that hook (default: when ``on_tokens`` is given); a caller that streams only some calls passes
    ``stream=True`` to every call so that they all share one program (without a listener the hook
    is skipped on the device). Either way the tokens are the same as without it.

    ``split``: ``nnx.split(model)``, made once by a caller that generates many times with weights
    that do not change (a server): splitting is most of a small call's host time.
    """
    if not isinstance(model, nnx.Module) or not hasattr(model, "extend"):
        raise TypeError(
            f"model must be a Decoder (an nnx.Module with extend), got {type(model)}"
        )
    sampling.validate_sampling(temperature, top_k, top_p)
    mode = sampling.SamplingMode.from_params(temperature, top_k, top_p)
    prompt_ids = inputs.validate_prompts(prompts, model.config.vocab_size)
    key_ids = inputs.validate_key_ids(key_ids, len(prompt_ids))
    if stop_token_ids is None:
        stop_token_ids = inputs.default_stop_token_ids(model)
    stop_ids = inputs.padded_stop_ids(stop_token_ids)
    placement = inputs.Placement(model, mesh)
    plan = plan_batches(
        [len(p) for p in prompt_ids],
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        max_batch_size=max_batch_size,
        buckets=buckets,
        batch_multiple=placement.batch_shards,
    )
    graphdef, state = nnx.split(model) if split is None else split
    state = placement.state(state)
    cache_dtype = jnp.dtype(model.dtype if cache_dtype is None else cache_dtype)
    scalars = dict(
        seed=placement.replicated(np.uint32(seed % 2**32)),
        temperature=placement.replicated(np.float32(temperature if temperature > 0 else 1.0)),
        top_p=placement.replicated(np.float32(top_p)),
        stop_ids_s=placement.replicated(stop_ids),
        max_new_tokens=placement.replicated(np.int32(max_new_tokens)),
    )
    stream = on_tokens is not None if stream is None else bool(stream)
    if on_tokens is not None and not stream:
        raise ValueError("generate: on_tokens needs stream=True (or stream left to its default)")
    results: list[list[Generation | None]] = [[None] * num_samples for _ in prompt_ids]
    with _progress_bar(len(plan.batches), progress) as bar:
        for batch in plan.batches:
            outputs, prompt_index_b, sample_index_b = _run_batch(
                graphdef, state, batch, plan, prompt_ids, key_ids, placement, scalars, cache_dtype=cache_dtype,
                mode=mode, early_stop=early_stop, stream=stream, on_tokens=on_tokens)
            _collect(outputs, prompt_index_b, sample_index_b, num_samples, include_stop, results)
            bar.update(1)
    return results  # type: ignore[return-value]


def _run_batch(graphdef, state, batch: Batch, plan: Plan, prompt_ids, key_ids, placement, scalars, *,
               cache_dtype, mode, early_stop, stream=False, on_tokens=None):
    rows, length, per_row = batch.batch_size, batch.prompt_length, plan.samples_per_row
    prompt_bt = np.zeros((rows, length), np.int32)
    mask_bt = np.zeros((rows, length), np.bool_)
    for r, unit in enumerate(batch.units):
        ids = prompt_ids[unit.prompt_index]
        prompt_bt[r, length - len(ids):] = ids
        mask_bt[r, length - len(ids):] = True
    mask_bt[len(batch.units):, -1] = True  # padding rows: one dummy token, never read
    cache, logits_bv, next_position_b = _prefill_program()(
        graphdef, state, placement.batch(prompt_bt), placement.batch(mask_bt),
        cache_length=plan.cache_length(batch), samples_per_row=per_row, cache_dtype=cache_dtype,
    )
    decode_rows = rows * per_row
    prompt_index_b = np.full(decode_rows, -1, np.int32)
    sample_index_b = np.zeros(decode_rows, np.int32)
    for r, unit in enumerate(batch.units):
        prompt_index_b[r * per_row:(r + 1) * per_row] = unit.prompt_index
        sample_index_b[r * per_row:(r + 1) * per_row] = unit.first_sample + np.arange(per_row)
    active_b = (prompt_index_b >= 0) & (sample_index_b < plan.num_samples)
    # The sampling keys read the key id where the row has a prompt (padding rows keep -1).
    key_index_b = np.where(prompt_index_b >= 0, key_ids[np.maximum(prompt_index_b, 0)], -1).astype(np.int32)
    stream_id = -1
    if on_tokens is not None:
        stream_id = next(_STREAM_IDS) % 2**31

        def listener(step, tokens_b):
            running_b = (tokens_b != _PAD_ID) & active_b
            if running_b.any():
                on_tokens(step, prompt_index_b[running_b], tokens_b[running_b])

        _STREAMS[stream_id] = listener
    try:
        outputs, _ = _decode_program(decode_rows)(
            graphdef, state, cache, logits_bv, next_position_b,
            placement.batch(active_b), placement.batch(key_index_b),
            placement.batch(sample_index_b), **scalars, stream_id=placement.replicated(np.int32(stream_id)),
            buffer_length=plan.new_tokens_length, mode=mode, early_stop=early_stop, stream=stream,
        )
        outputs = sharding_lib.to_host(outputs)
        if on_tokens is not None:
            jax.effects_barrier()  # every step's callback has run before the listener goes
    finally:
        _STREAMS.pop(stream_id, None)
    return outputs, prompt_index_b, sample_index_b


def _collect(outputs: _DecodeOutputs, prompt_index_b, sample_index_b, num_samples: int, include_stop: bool,
             results):
    """Cuts each decode row at its length and files it under [prompt][sample]."""
    rows = zip(prompt_index_b, sample_index_b)
    for row, (prompt, sample) in enumerate(rows):
        if prompt < 0 or sample >= num_samples:
            continue
        count = int(outputs.num_tokens_b[row])
        reason = _CODE_TO_REASON[int(outputs.finish_b[row])]
        tokens = outputs.tokens_bn[row, :count]
        stop_token = int(tokens[-1]) if reason == "stop" else None
        keep = count if include_stop or reason != "stop" else count - 1
        results[prompt][sample] = Generation(
            tokens=tokens[:keep].copy(),
            logprobs=outputs.logprobs_bn[row, :keep].copy(),
            finish_reason=reason,
            stop_token=stop_token,
            sampling_logprobs=outputs.sample_logprobs_bn[row, :keep].copy(),
        )
