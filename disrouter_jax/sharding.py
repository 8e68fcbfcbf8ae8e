"""Device mesh and logical-axis rules.

Every parameter and activation names its dimensions with *logical* axes (``vocab``, ``embed``,
``heads``, ...). A rule table maps each logical axis to zero or more mesh axes. The mapping is
resolved per array, against its actual shape: a dimension that the mesh axes do not divide is
replicated instead (e.g. Qwen2.5-0.5B's 14 query heads and 2 KV heads on ``tensor=8``). Replication
costs memory but is always correct, and for the heads of the small agents that fall back it is only
a few megabytes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Batch is split over both data-parallel axes; weights are split over
# fsdp along their model dimension and over tensor along heads / mlp / vocab (Megatron layout).
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", ()),
    ("vocab", ("tensor",)),
    ("embed", ("fsdp",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", ()),
    ("mlp", ("tensor",)),
    ("norm", ()),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the named mesh axes; ``-1`` on one axis means "all remaining devices"."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def sizes(self, num_devices: int) -> dict[str, int]:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        free = [name for name, size in sizes.items() if size == -1]
        if len(free) > 1:
            raise ValueError(f"mesh config {sizes}: at most one axis may be -1")
        for name, size in sizes.items():
            if size == 0 or size < -1:
                raise ValueError(f"mesh config {sizes}: axis {name!r} has invalid size {size}")
        fixed = math.prod(size for size in sizes.values() if size != -1)
        if free:
            if num_devices % fixed:
                raise ValueError(
                    f"mesh config {sizes}: fixed axes multiply to {fixed}, which does not divide "
                    f"the {num_devices} available devices"
                )
            sizes[free[0]] = num_devices // fixed
        if math.prod(sizes.values()) != num_devices:
            raise ValueError(
                f"mesh config {sizes} needs {math.prod(sizes.values())} devices, "
                f"but {num_devices} are available"
            )
        return sizes


def make_mesh(config: MeshConfig | Mapping[str, int] | None = None, devices=None) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all devices)."""
    if config is None:
        config = MeshConfig()
    elif isinstance(config, Mapping):
        config = MeshConfig(**dict(config))
    devices = list(jax.devices() if devices is None else devices)
    sizes = config.sizes(len(devices))
    shape = tuple(sizes[name] for name in MESH_AXES)
    if devices == list(jax.devices()):
        # make_mesh orders devices by physical topology (ICI rings on TPU, NVLink on GPU). Auto
        # axes: shardings are propagated by the compiler from the parameters and our hints.
        auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
        return jax.make_mesh(shape, MESH_AXES, auto)
    # An explicit device list (a sub-mesh for one cascade stage) keeps the caller's order.
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES)


Rules = Sequence[tuple[str, Sequence[str]]]


def auto_mesh(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis of type Auto (the same devices in the same order).

    ``jax.make_mesh`` makes Explicit axes by default, under which an array's sharding is part of
    its type: an eager forward then failed in the embedding gather (``ShardingTypeError``) and
    ``with_sharding_constraint`` refuses Explicit axes. The model's plan is hints that the
    compiler propagates (Auto), so a model loaded on such a mesh lives on its Auto twin.
    """
    if all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))


def check_mesh_axes(mesh: Mesh, rules: Rules | None = None) -> None:
    """ValueError unless ``mesh`` has every mesh axis the rules name."""
    named = {axis for _, axes in (DEFAULT_RULES if rules is None else rules) for axis in axes}
    missing = sorted(named - set(mesh.axis_names))
    if missing:
        raise ValueError(
            f"mesh axes {tuple(mesh.axis_names)} lack {missing}, which the sharding rules use; "
            f"pass a mesh from disrouter_jax.sharding.make_mesh, or jax.make_mesh(shape, {MESH_AXES}) "
            f"(a size-1 axis where there is nothing to split)"
        )


def logical_to_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules | None = None
) -> PartitionSpec:
    """Resolves logical axis names to a PartitionSpec valid for an array of ``shape``.

    A mesh axis is used at most once per array (first dimension wins) and only where it divides
    the dimension; size-1 mesh axes are dropped so that specs stay readable.
    """
    rule_map = dict(DEFAULT_RULES if rules is None else rules)
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in rule_map:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(rule_map)}")
        chosen = []
        divisor = 1
        for mesh_axis in rule_map[name]:
            size = mesh.shape[mesh_axis]
            if size == 1 or mesh_axis in used:
                continue
            if dim % (divisor * size) == 0:
                chosen.append(mesh_axis)
                divisor *= size
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def named_sharding(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules | None = None
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


@dataclasses.dataclass(frozen=True)
class ShardingContext:
    """A mesh plus its rules, carried by a model so activations can be constrained under jit."""

    mesh: Mesh
    rules: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_RULES

    def __post_init__(self):
        check_mesh_axes(self.mesh, self.rules)
        object.__setattr__(self, "mesh", auto_mesh(self.mesh))

    def adopt(self, x):
        """An array placed on this mesh's Explicit twin (same devices, Explicit axes), moved onto
        this mesh with the same spec (each device keeps its shard); anything else as it is."""
        sharding = getattr(x, "sharding", None)
        if (isinstance(x, jax.core.Tracer) or not isinstance(sharding, NamedSharding)
                or sharding.mesh == self.mesh or auto_mesh(sharding.mesh) != self.mesh):
            return x
        return jax.device_put(x, NamedSharding(self.mesh, sharding.spec))

    def constrain(self, x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
        _check_context_mesh()
        return jax.lax.with_sharding_constraint(
            x, named_sharding(logical_axes, x.shape, self.mesh, self.rules)
        )

    def gather_weight(self, w: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
        """A weight as its matmul consumes it: split over the tensor axes as stored, whole over the
        mesh axes that split the batch (FSDP's all-gather at use; its gradient, a reduce-scatter).

        Left to itself the partitioner is free to pick another plan per op: on the (data 2, fsdp 2,
        tensor 2) mesh it computed the embedding gather with the table's embed split over fsdp and
        then had to "replicate the tensor and then partition it" to reach the batch-split
        activations (an all-gather of every activation over all 8 devices), and with 7 query heads
        it moved weight shards around with collective-permutes instead of gathering them.
        """
        _check_context_mesh()
        batch_axes = set(dict(self.rules).get("batch", ()))
        spec = logical_to_spec(logical_axes, w.shape, self.mesh, self.rules)
        kept = []
        for entry in spec:
            axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
            axes = tuple(a for a in axes if a not in batch_axes)
            kept.append(None if not axes else axes[0] if len(axes) == 1 else axes)
        return jax.lax.with_sharding_constraint(w, NamedSharding(self.mesh, PartitionSpec(*kept)))


def _check_context_mesh() -> None:
    context = jax.sharding.get_abstract_mesh()
    if not context.empty and context.explicit_axes:
        raise ValueError(
            f"the model runs under a mesh context with Explicit axes {context.explicit_axes} "
            "(jax.set_mesh / jax.sharding.use_mesh), where its sharding hints would be assertions; "
            "call it outside that context: the model carries its own mesh (model.sharding.mesh)"
        )


def freeze_rules(rules: Rules | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if rules is None:
        return DEFAULT_RULES
    return tuple((name, tuple(axes)) for name, axes in rules)


def constrain(x: jax.Array, logical_axes: Sequence[str | None], ctx: ShardingContext | None):
    """Sharding hint for an activation; a no-op without a mesh."""
    return x if ctx is None else ctx.constrain(x, logical_axes)


def gather_weight(x: jax.Array, logical_axes: Sequence[str | None], ctx: ShardingContext | None):
    """``ShardingContext.gather_weight``; a no-op without a mesh."""
    return x if ctx is None else ctx.gather_weight(x, logical_axes)


def to_host(tree):
    """Every leaf as a numpy array holding the *global* value, on every process.

    One place for device-to-host copies, because a leaf sharded over several processes cannot be
    read with ``device_get``: it takes an all-gather, a collective, so every process must call
    this with the same tree.
    """
    from jax.experimental import multihost_utils

    def one(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        if x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)
