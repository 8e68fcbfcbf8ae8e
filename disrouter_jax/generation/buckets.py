"""Shape buckets and batch planning for generation.

Every distinct (batch size, prompt length, cache length) is a separate XLA program, so the engine
rounds them up to a small set of sizes: over a whole dataset it compiles at most one prefill
program per prompt-length bucket and one decode program per cache-length bucket (per batch bucket,
and a run over several batches uses a single batch bucket).

Planning is host-side integer bookkeeping with no JAX in it, kept pure so it is tested directly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class BucketConfig:
    """How shapes are rounded.

    ``prompt_lengths``: explicit ascending prompt-length buckets; ``None`` means powers of two
    starting at ``min_prompt_length``. A prompt longer than the largest explicit bucket is rounded
    up to a multiple of it. ``new_tokens``: the same for ``max_new_tokens`` (it sizes the token
    buffer and the KV cache; the loop itself stops at the exact ``max_new_tokens``).
    """

    min_prompt_length: int = 16
    prompt_lengths: tuple[int, ...] | None = None
    min_new_tokens: int = 16
    new_tokens: tuple[int, ...] | None = None

    def __post_init__(self):
        for name in ("min_prompt_length", "min_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"BucketConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prompt_lengths", "new_tokens"):
            value = getattr(self, name)
            if value is None:
                continue
            if not value or any(int(v) < 1 for v in value) or list(value) != sorted(set(value)):
                raise ValueError(
                    f"BucketConfig.{name} must be strictly increasing positive sizes, got {value}"
                )

    def prompt_bucket(self, length: int) -> int:
        return round_up(length, self.prompt_lengths, self.min_prompt_length)

    def new_tokens_bucket(self, max_new_tokens: int) -> int:
        return round_up(max_new_tokens, self.new_tokens, self.min_new_tokens)


def next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def round_up(n: int, buckets: Sequence[int] | None, minimum: int) -> int:
    """Smallest bucket >= ``n``: explicit ``buckets``, else powers of two >= ``minimum``."""
    if n < 1:
        raise ValueError(f"cannot bucket a size of {n}")
    if buckets is None:
        return next_power_of_two(max(n, minimum))
    for bucket in buckets:
        if bucket >= n:
            return bucket
    largest = buckets[-1]
    return math.ceil(n / largest) * largest


@dataclasses.dataclass(frozen=True)
class Unit:
    """One prefill row: prompt ``prompt_index``, decoded as samples ``first_sample`` onwards."""

    prompt_index: int
    first_sample: int


@dataclasses.dataclass(frozen=True)
class Batch:
    """Units prefilled together; ``batch_size`` (>= len(units)) is the padded prefill batch."""

    units: tuple[Unit, ...]
    batch_size: int
    prompt_length: int


@dataclasses.dataclass(frozen=True)
class Plan:
    """``samples_per_row`` decode rows follow each prefill row (the prompt's cache repeated).

    ``new_tokens_length`` sizes the token buffers; a batch's KV cache holds
    ``batch.prompt_length + new_tokens_length`` slots. Decode rows whose sample index reaches
    ``num_samples`` (the tail of a prompt's last unit) are padding.
    """

    batches: tuple[Batch, ...]
    samples_per_row: int
    new_tokens_length: int
    num_samples: int

    def cache_length(self, batch: Batch) -> int:
        return batch.prompt_length + self.new_tokens_length


def plan_batches(
    prompt_lengths: Sequence[int],
    *,
    num_samples: int,
    max_new_tokens: int,
    max_batch_size: int,
    buckets: BucketConfig,
    batch_multiple: int = 1,
) -> Plan:
    """Groups prompts (longest first, so a batch holds similar lengths) into padded batches.

    A decode batch holds at most ``max_batch_size`` rows, except that it always holds the
    ``min(num_samples, max_batch_size)`` samples of at least one prompt. A prompt with more samples
    than that is split into several units, each prefilled separately. ``batch_multiple`` (the number
    of batch shards of the mesh) divides every decode batch so that it shards evenly.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    samples_per_row = min(num_samples, max_batch_size)
    units_per_batch = max(1, max_batch_size // samples_per_row)
    order = sorted(range(len(prompt_lengths)), key=lambda i: -prompt_lengths[i])
    units = [
        Unit(p, first)
        for p in order
        for first in range(0, num_samples, samples_per_row)
    ]
    chunks = [units[i : i + units_per_batch] for i in range(0, len(units), units_per_batch)]
    # Several batches in one call all take the full size: one batch bucket per call.
    full = len(chunks) > 1
    new_tokens_length = buckets.new_tokens_bucket(max_new_tokens)
    batches = []
    for chunk in chunks:
        size = units_per_batch if full else min(next_power_of_two(len(chunk)), units_per_batch)
        size = _round_to_shards(size, samples_per_row, batch_multiple)
        length = buckets.prompt_bucket(max(prompt_lengths[u.prompt_index] for u in chunk))
        batches.append(Batch(tuple(chunk), size, length))
    return Plan(tuple(batches), samples_per_row, new_tokens_length, num_samples)


def _round_to_shards(size: int, samples_per_row: int, batch_multiple: int) -> int:
    # The decode batch is size * samples_per_row; make it a multiple of the batch shards.
    step = batch_multiple // math.gcd(batch_multiple, samples_per_row)
    return math.ceil(size / step) * step
