"""Label-free baselines on an outcome table: Smallest, Largest, Random (two kinds) and Oracle.

Each sends every query to one agent and takes that agent's recorded reply; a refusal is a forced
refusal (scored wrong), exactly as for the cascade's last agent, so every method sees the same
agent behaviour. Cost of a query = the chosen agent's cost.

Random comes in two kinds, both reported:
* ``random_uniform`` — each query to an agent drawn uniformly (seeded).
* ``random_cost_matched`` — agents drawn from the maximum-entropy distribution whose mean cost
  equals the cascade's mean cost at that α (over all evaluated queries at that α), so the
  comparison with DiSRouter is at equal spend. The agent counts are fixed by largest-remainder
  rounding of p·N and then shuffled, so the realised mean cost matches up to rounding.
Both draw per α from ``numpy.random.default_rng([seed, round(α·1e6)])`` over rows sorted by
(dataset, query_id): deterministic from the seed and independent of row order.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from disrouter_jax.cascade.log import ANSWER, OutcomeRow, RoutingRecord
from disrouter_jax.cascade.metrics import oracle_agent, pool_costs

SMALLEST = "smallest"
LARGEST = "largest"
RANDOM_UNIFORM = "random_uniform"
RANDOM_COST_MATCHED = "random_cost_matched"
ORACLE = "oracle"
BASELINES = (SMALLEST, LARGEST, RANDOM_UNIFORM, RANDOM_COST_MATCHED, ORACLE)


def single_agent_record(row: OutcomeRow, agent: str, costs: Mapping[str, float], method: str) -> RoutingRecord:
    """Routing record for sending ``row`` straight to ``agent``."""
    outcome = row.outcome(agent)
    return RoutingRecord(
        query_id=row.query_id, dataset=row.dataset, alpha=row.alpha, visited=(outcome.visit(),),
        final_agent=agent, response=outcome.response, correct=outcome.decision == ANSWER and outcome.correct,
        cost=float(costs[agent]), domain=row.domain, method=method, forced_refusal=outcome.decision != ANSWER,
    )


def _cheapest(pool: Sequence[str], costs: Mapping[str, float]) -> str:
    return min(pool, key=lambda a: (costs[a], list(pool).index(a)))


def _dearest(pool: Sequence[str], costs: Mapping[str, float]) -> str:
    return max(pool, key=lambda a: (costs[a], list(pool).index(a)))


def smallest(rows: Sequence[OutcomeRow], pool: Sequence[str], costs=None) -> list[RoutingRecord]:
    costs = pool_costs(pool, costs)
    agent = _cheapest(pool, costs)
    return [single_agent_record(row, agent, costs, SMALLEST) for row in rows]


def largest(rows: Sequence[OutcomeRow], pool: Sequence[str], costs=None) -> list[RoutingRecord]:
    costs = pool_costs(pool, costs)
    agent = _dearest(pool, costs)
    return [single_agent_record(row, agent, costs, LARGEST) for row in rows]


def oracle(rows: Sequence[OutcomeRow], pool: Sequence[str], costs=None) -> list[RoutingRecord]:
    costs = pool_costs(pool, costs)
    return [single_agent_record(row, oracle_agent(row, pool, costs), costs, ORACLE) for row in rows]


def _by_alpha(rows: Sequence[OutcomeRow]) -> dict[float, list[OutcomeRow]]:
    groups: dict[float, list[OutcomeRow]] = {}
    for row in rows:
        groups.setdefault(round(row.alpha, 6), []).append(row)
    return {alpha: sorted(group, key=lambda r: (r.dataset, r.query_id)) for alpha, group in sorted(groups.items())}


def _rng(seed: int, alpha: float) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(round(alpha * 1e6))])


def random_uniform(rows: Sequence[OutcomeRow], pool: Sequence[str], costs=None, seed: int = 0) -> list[RoutingRecord]:
    costs = pool_costs(pool, costs)
    records = []
    for alpha, group in _by_alpha(rows).items():
        choice_n = _rng(seed, alpha).integers(len(pool), size=len(group))
        records += [single_agent_record(row, pool[k], costs, RANDOM_UNIFORM) for row, k in zip(group, choice_n)]
    return records


def cost_matched_probabilities(costs_a: Sequence[float], target_cost: float) -> np.ndarray:
    """Maximum-entropy distribution over agents with mean cost ``target_cost``: p ∝ exp(−λ·c).

    A target outside [min c, max c] is clipped to the nearest end (all mass on the cheapest or
    dearest agents).
    """
    costs_a = np.asarray(costs_a, dtype=np.float64)
    low, high = costs_a.min(), costs_a.max()
    if high - low < 1e-12:
        return np.full(costs_a.shape, 1.0 / costs_a.size)
    if target_cost <= low:
        mass = costs_a <= low + 1e-12
        return mass / mass.sum()
    if target_cost >= high:
        mass = costs_a >= high - 1e-12
        return mass / mass.sum()
    scaled_a = (costs_a - low) / (high - low)
    target = (target_cost - low) / (high - low)

    def mean_cost(lam: float) -> tuple[float, np.ndarray]:
        logits = -lam * scaled_a
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return float(p @ scaled_a), p

    lo, hi = -1e3, 1e3  # mean cost falls as λ rises
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mean_cost(mid)[0] > target:
            lo = mid
        else:
            hi = mid
    return mean_cost(0.5 * (lo + hi))[1]


def _largest_remainder_counts(p_a: np.ndarray, n: int) -> np.ndarray:
    exact = p_a * n
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: max(0, n - counts.sum())]] += 1
    return counts


def random_cost_matched(rows: Sequence[OutcomeRow], pool: Sequence[str], costs,
                        target_cost_by_alpha: Mapping[float, float], seed: int = 0) -> list[RoutingRecord]:
    """Random routing whose mean cost matches ``target_cost_by_alpha[α]`` (see module doc)."""
    costs = pool_costs(pool, costs)
    targets = {round(a, 6): c for a, c in target_cost_by_alpha.items()}
    records = []
    for alpha, group in _by_alpha(rows).items():
        if alpha not in targets:
            raise ValueError(f"random_cost_matched: no target cost for alpha={alpha}; given for {sorted(targets)}")
        p_a = cost_matched_probabilities([costs[a] for a in pool], targets[alpha])
        counts = _largest_remainder_counts(p_a, len(group))
        choice_n = _rng(seed, alpha).permutation(np.repeat(np.arange(len(pool)), counts))
        records += [single_agent_record(row, pool[k], costs, RANDOM_COST_MATCHED) for row, k in zip(group, choice_n)]
    return records


def mean_cost_by_alpha(records: Sequence[RoutingRecord]) -> dict[float, float]:
    totals: dict[float, list[float]] = {}
    for record in records:
        totals.setdefault(round(record.alpha, 6), []).append(record.cost)
    return {alpha: sum(c) / len(c) for alpha, c in totals.items()}


def all_baselines(rows: Sequence[OutcomeRow], pool: Sequence[str], costs,
                  cascade_records: Sequence[RoutingRecord], seed: int = 0) -> list[RoutingRecord]:
    """Every baseline of this module; the cost-matched random follows ``cascade_records``."""
    costs = pool_costs(pool, costs)
    return (smallest(rows, pool, costs) + largest(rows, pool, costs)
            + random_uniform(rows, pool, costs, seed)
            + random_cost_matched(rows, pool, costs, mean_cost_by_alpha(cascade_records), seed)
            + oracle(rows, pool, costs))
