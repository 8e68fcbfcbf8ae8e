"""Replay: rebuild the DiSRouter cascade from an outcome table, for any α and any sub-pool,
without running a model.

The agents' decisions are their own and depend on α (the scenario instruction is in the prompt),
so the table is keyed by α: replaying at α uses the rows recorded at α. To score at an α that was
never recorded (e.g. a fine α grid for a curve), pass ``decisions_alpha`` — the recorded α whose
decisions stand in — and the utility is computed at ``alpha``.

Sub-pools (e.g. the paper's 1.5B/3B/14B subset): list the agents to keep, in cascade order.
Costs: ``costs=None`` re-normalises to :func:`metrics.default_costs` over the sub-pool
(3 agents → 0.1/0.5/0.9); pass a mapping (e.g. the full pool's costs) to keep given costs.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from disrouter_jax.cascade.log import ANSWER, DISROUTER, OutcomeRow, RoutingRecord
from disrouter_jax.cascade.metrics import COST_FINAL, pool_costs, routing_cost


def table_agents(rows: Sequence[OutcomeRow]) -> list[str]:
    """Pool order recorded in the table (from its first row); every row must hold these agents."""
    if not rows:
        raise ValueError("outcome table is empty")
    agents = [o.agent for o in rows[0].outcomes]
    for row in rows:
        if sorted(o.agent for o in row.outcomes) != sorted(agents):
            raise ValueError(f"outcome row dataset={row.dataset!r} query_id={row.query_id!r} alpha={row.alpha} "
                             f"holds agents {[o.agent for o in row.outcomes]}, expected {agents}")
    return agents


def table_alphas(rows: Sequence[OutcomeRow]) -> list[float]:
    return sorted({round(row.alpha, 6) for row in rows})


def rows_at(rows: Sequence[OutcomeRow], alpha: float) -> list[OutcomeRow]:
    """Rows recorded under scenario ``alpha``; raises listing the recorded α values if none."""
    selected = [row for row in rows if round(row.alpha, 6) == round(alpha, 6)]
    if not selected:
        raise ValueError(f"outcome table has no rows for alpha={alpha}; recorded alphas: {table_alphas(rows)}")
    return selected


def cascade_record(row: OutcomeRow, pool: Sequence[str], costs: Mapping[str, float], alpha: float,
                   cost_mode: str = COST_FINAL, method: str = DISROUTER) -> RoutingRecord:
    """Walk ``pool`` in order until an agent answers; the last agent's reply is final either way
    (a refusal there is a forced refusal, scored wrong)."""
    visits = []
    for agent in pool:
        outcome = row.outcome(agent)
        visits.append(outcome.visit())
        if outcome.decision == ANSWER:
            break
    final = row.outcome(visits[-1].agent)
    return RoutingRecord(
        query_id=row.query_id, dataset=row.dataset, alpha=alpha, visited=tuple(visits),
        final_agent=final.agent, response=final.response, correct=final.decision == ANSWER and final.correct,
        cost=routing_cost([v.agent for v in visits], costs, cost_mode), domain=row.domain, method=method,
        forced_refusal=final.decision != ANSWER,
    )


def replay_cascade(rows: Sequence[OutcomeRow], pool: Optional[Sequence[str]] = None,
                   costs: Optional[Mapping[str, float] | Sequence[float]] = None, alpha: Optional[float] = None,
                   decisions_alpha: Optional[float] = None, cost_mode: str = COST_FINAL,
                   method: str = DISROUTER) -> list[RoutingRecord]:
    """DiSRouter routing records recomputed from the table.

    ``alpha=None`` replays every recorded α at itself; otherwise only ``alpha``, with decisions
    taken from the rows at ``decisions_alpha`` (default: ``alpha``).
    """
    pool = list(pool) if pool is not None else table_agents(rows)
    costs = pool_costs(pool, costs)
    if alpha is None:
        if decisions_alpha is not None:
            raise ValueError("replay_cascade: decisions_alpha needs an explicit alpha")
        return [cascade_record(row, pool, costs, row.alpha, cost_mode, method) for row in rows]
    source = rows_at(rows, alpha if decisions_alpha is None else decisions_alpha)
    return [cascade_record(row, pool, costs, alpha, cost_mode, method) for row in source]


def replay_all(rows: Sequence[OutcomeRow], pool: Optional[Sequence[str]] = None,
               costs: Optional[Mapping[str, float] | Sequence[float]] = None, seed: int = 0,
               cost_mode: str = COST_FINAL) -> list[RoutingRecord]:
    """The cascade plus every label-free baseline (smallest, largest, both randoms, oracle) for
    every recorded α — the routing log a replayed evaluation reports on."""
    from disrouter_jax.cascade import baselines  # local: baselines never needs replay

    pool = list(pool) if pool is not None else table_agents(rows)
    costs = pool_costs(pool, costs)
    cascade = replay_cascade(rows, pool, costs, cost_mode=cost_mode)
    return cascade + baselines.all_baselines(rows, pool, costs, cascade, seed=seed)
