"""Where the evaluated agents run: one device group per agent, all on every device, or the pool's own.

``eval.placement``: "shared" (every agent on the whole mesh), "per_agent" (disjoint contiguous
device groups, so the engine can pipeline micro-batches through them), "pool" (each spec's own
``devices``); ``eval.agent_devices`` lists the groups explicitly. Across hosts every host holds
the whole pool on its own devices (:func:`evaluation_mesh`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from disrouter_jax.agents import AgentSpec
from disrouter_jax.distributed import work

PLACEMENTS = ("shared", "per_agent", "pool")


def split_devices(num_devices: int, num_agents: int) -> list[tuple[int, ...]]:
    """Disjoint contiguous device groups, one per agent; later (bigger) agents get the spare
    devices. With fewer devices than agents, agents share devices round-robin."""
    if num_devices < num_agents:
        return [(k % num_devices,) for k in range(num_agents)]
    base, spare = divmod(num_devices, num_agents)
    sizes = [base + (k >= num_agents - spare) for k in range(num_agents)]
    starts = np.cumsum([0] + sizes[:-1])
    return [tuple(range(int(s), int(s) + n)) for s, n in zip(starts, sizes)]


def place_agents(specs: Sequence[AgentSpec], eval_cfg, num_devices: int) -> list[AgentSpec]:
    """Specs with the devices chosen by ``eval.placement`` / ``eval.agent_devices``."""
    if eval_cfg.placement not in PLACEMENTS:
        raise ValueError(f"config.eval.placement must be one of {PLACEMENTS}, got {eval_cfg.placement!r}")
    explicit = [tuple(int(i) for i in d) for d in eval_cfg.agent_devices]
    if explicit:
        if len(explicit) != len(specs):
            raise ValueError(f"config.eval.agent_devices lists {len(explicit)} device groups for {len(specs)} agents")
        return [dataclasses.replace(s, devices=d, mesh=None) for s, d in zip(specs, explicit)]
    if eval_cfg.placement == "pool":
        return list(specs)
    if eval_cfg.placement == "shared":
        return [dataclasses.replace(s, devices=None, mesh=None) for s in specs]
    groups = split_devices(num_devices, len(specs))
    return [dataclasses.replace(s, devices=g, mesh=None) for s, g in zip(specs, groups)]


def evaluation_mesh(config, mesh):
    """The mesh agents load on: ``mesh`` on one process; across processes each host's own devices
    (``config.mesh`` over them), since every host evaluates its block of queries on its own."""
    if jax.process_count() == 1:
        return mesh
    return work.local_mesh(dict(config.mesh))
