"""``generate``'s inputs checked and placed: prompts, key ids, stop ids, and the arrays' devices.

Host-side work before any program runs, kept apart from the compiled prefill / decode programs
(``engine``): a bad input is an error naming it, never a shape error from inside a trace.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from disrouter_jax import sharding as sharding_lib
from disrouter_jax.generation.buckets import next_power_of_two


def default_stop_token_ids(model) -> tuple[int, ...]:
    """The model config's ``eos_token_id``(s): where a row stops unless the caller says otherwise."""
    eos = model.config.eos_token_id
    if eos is None:
        return ()
    return (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)


def padded_stop_ids(stop_token_ids) -> np.ndarray:
    """Stop ids padded with -1 (never a token) to a power of two >= 4, so that stop sets of
    similar size share one compiled program."""
    ids = sorted({int(t) for t in stop_token_ids})
    if any(t < 0 for t in ids):
        raise ValueError(f"stop_token_ids must be >= 0, got {ids}")
    padded = np.full(next_power_of_two(max(len(ids), 4)), -1, np.int32)
    padded[: len(ids)] = ids
    return padded


def validate_prompts(prompts, vocab_size: int) -> list[np.ndarray]:
    if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
        prompts = list(prompts)  # equal-length prompts as one [P, T] array
    if len(prompts) and isinstance(prompts[0], (int, np.integer)):
        raise TypeError("prompts must be a sequence of token-id sequences (one per prompt), "
                        "got a flat sequence of ints")
    out = []
    for i, prompt in enumerate(prompts):
        ids = np.asarray(prompt)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"prompts[{i}]: expected a non-empty 1-D sequence of token ids, "
                             f"got shape {ids.shape} dtype {ids.dtype}")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"prompts[{i}]: token ids must be in [0, {vocab_size}), "
                             f"got range [{ids.min()}, {ids.max()}]")
        out.append(ids.astype(np.int32))
    return out


def _batch_axes_size(mesh, rules) -> int:
    rule_map = dict(sharding_lib.DEFAULT_RULES if rules is None else rules)
    return int(np.prod([mesh.shape[axis] for axis in rule_map["batch"]]))


class Placement:
    """Where arrays go: the model's mesh (or the one given), or the default device."""

    def __init__(self, model, mesh):
        ctx = model.sharding
        if mesh is not None:
            mesh = sharding_lib.auto_mesh(mesh)  # as the model's (ShardingContext)
        if ctx is not None and mesh is not None and mesh != ctx.mesh:
            raise ValueError("generate(mesh=...) differs from the mesh the model was loaded on; "
                             "load the model with that mesh or pass mesh=None")
        self.mesh = ctx.mesh if ctx is not None else mesh
        self.rules = ctx.rules if ctx is not None else None
        self.model_on_mesh = ctx is not None

    @property
    def batch_shards(self) -> int:
        return 1 if self.mesh is None else _batch_axes_size(self.mesh, self.rules)

    def state(self, state):
        if self.mesh is None or self.model_on_mesh:
            return state
        # An unsharded model run on a mesh: replicate its weights there (once per call).
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        return jax.device_put(state, replicated)

    def batch(self, array: np.ndarray):
        axes = ("batch",) + ("length",) * (array.ndim - 1)
        return self._place(array, axes)

    def replicated(self, array):
        return self._place(np.asarray(array), (None,) * np.ndim(array))

    def _place(self, array: np.ndarray, axes):
        if self.mesh is None:
            return jnp.asarray(array)
        # Every process holds the same host array; each device takes its own slice (this also
        # works when the mesh spans several processes).
        target = sharding_lib.named_sharding(axes, array.shape, self.mesh, self.rules)
        return jax.make_array_from_callback(array.shape, target, lambda index: array[index])


def validate_key_ids(key_ids, num_prompts: int) -> np.ndarray:
    if key_ids is None:
        return np.arange(num_prompts, dtype=np.int32)
    ids = np.asarray(key_ids)
    if ids.shape != (num_prompts,) or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"key_ids: expected one integer per prompt ({num_prompts}), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= 2**31):
        raise ValueError(f"key_ids must be in [0, 2**31), got range [{ids.min()}, {ids.max()}]")
    return ids.astype(np.int32)
