"""Pure evaluation arithmetic over routing records: accuracy, cost, utility, oracle, agent shares,
answer rates and self-assessment scores.

Definitions (one place, used by report, replay, baselines and routers):

* utility = accuracy − α · mean cost, where a record's cost is whatever its method paid
  (see :func:`routing_cost`) and a final refusal counts as a wrong answer.
* oracle: per query the cheapest agent whose actual reply is a correct answer; when no agent
  answers correctly, the cheapest agent (scored wrong, charged its cost).
* % of oracle utility = 100 · utility / oracle utility on the same queries; ``None`` when the
  oracle utility is ≤ 0 (a ratio to a non-positive number has no meaning).
* share of an agent = fraction of the group's queries whose final agent it is.
* answer rate of an agent = answers / queries that reached it; ``None`` if none reached it.
* self-assessment of an agent, positive class = "refuse", label = "its answer would be wrong":
  where it answered, the label is its answer's correctness; where it refused, the label comes
  from its forced answer when one was recorded (``Visit.correct``), otherwise that query is
  excluded from its self-assessment (``n_excluded`` counts them). Only queries that reached the
  agent are scored, so the figures describe the agent inside the routing that produced the log.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from disrouter_jax.cascade.log import ANSWER, IN_DOMAIN, OUT_OF_DOMAIN, REFUSE, OutcomeRow, RoutingRecord

ALL = "all"
DATASET_PREFIX = "dataset:"

COST_FINAL = "final"  # pay only the agent whose reply is returned (refusals are a few tokens)
COST_CUMULATIVE = "cumulative"  # pay every visited agent (e.g. FrugalGPT generates each answer)
COST_MODES = (COST_FINAL, COST_CUMULATIVE)


def default_costs(n: int) -> tuple[float, ...]:
    """Normalised costs 0.1 … 0.9, evenly spaced over a pool of ``n`` agents (cheapest first)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"default_costs: pool size must be a positive int, got {n!r}")
    if n == 1:
        return (0.1,)
    return tuple(float(c) for c in np.round(np.linspace(0.1, 0.9, n), 10))


def pool_costs(agents: Sequence[str], costs: Optional[Mapping[str, float] | Sequence[float]] = None) -> dict[str, float]:
    """Agent → cost. ``None`` gives :func:`default_costs` over ``agents`` in order; a sequence is
    zipped with ``agents``; a mapping must cover every agent (extra agents are ignored)."""
    agents = list(agents)
    if not agents or len(set(agents)) != len(agents):
        raise ValueError(f"pool_costs: agents must be a non-empty list of distinct names, got {agents}")
    if costs is None:
        values = default_costs(len(agents))
    elif isinstance(costs, Mapping):
        missing = [a for a in agents if a not in costs]
        if missing:
            raise ValueError(f"pool_costs: no cost given for agent(s) {missing}; costs has {sorted(costs)}")
        values = [costs[a] for a in agents]
    else:
        values = list(costs)
        if len(values) != len(agents):
            raise ValueError(f"pool_costs: {len(values)} costs for {len(agents)} agents {agents}")
    result = {}
    for agent, value in zip(agents, values):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ValueError(f"pool_costs: cost of agent {agent!r} must be a finite number >= 0, got {value!r}")
        result[agent] = float(value)
    return result


def routing_cost(visited_agents: Sequence[str], costs: Mapping[str, float], mode: str = COST_FINAL) -> float:
    """Cost a method pays for one query that visited ``visited_agents`` (last one answered)."""
    if mode not in COST_MODES:
        raise ValueError(f"routing_cost: cost mode must be one of {COST_MODES}, got {mode!r}")
    if not visited_agents:
        raise ValueError("routing_cost: no agent visited")
    if mode == COST_FINAL:
        return float(costs[visited_agents[-1]])
    return float(sum(costs[a] for a in visited_agents))


def utility(accuracy: float, mean_cost: float, alpha: float) -> float:
    return accuracy - alpha * mean_cost


def percent_of_oracle(method_utility: Optional[float], oracle_utility: Optional[float]) -> Optional[float]:
    if method_utility is None or oracle_utility is None or oracle_utility <= 0:
        return None
    return 100.0 * method_utility / oracle_utility


def alpha_key(alpha: float) -> str:
    """Stable text key for an α (report.json keys, file names): 0.2 → "0.2"."""
    return f"{round(float(alpha), 6):g}"


def oracle_agent(row: OutcomeRow, agents: Sequence[str], costs: Mapping[str, float]) -> str:
    """Cheapest agent of ``agents`` that answered ``row`` correctly, else the cheapest agent.

    Ties in cost go to the earlier agent in ``agents``.
    """
    by_cost = sorted(agents, key=lambda a: (costs[a], list(agents).index(a)))
    for agent in by_cost:
        outcome = row.outcome(agent)
        if outcome.decision == ANSWER and outcome.correct:
            return agent
    return by_cost[0]


def confusion_scores(tp: int, fp: int, fn: int, tn: int) -> dict:
    """Accuracy/precision/recall/F1 with ``None`` where a denominator is zero."""
    n = tp + fp + fn + tn
    return {
        "n_scored": n, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "accuracy": (tp + tn) / n if n else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None,
    }


def self_assessment(records: Iterable[RoutingRecord], agent: str) -> dict:
    """Refusal-as-detector scores of ``agent`` over the queries that reached it (see module doc)."""
    tp = fp = fn = tn = excluded = 0
    for record in records:
        for visit in record.visited:
            if visit.agent != agent:
                continue
            if visit.correct is None:
                excluded += 1
                continue
            refused, wrong = visit.decision == REFUSE, not visit.correct
            tp += refused and wrong
            fp += refused and not wrong
            fn += (not refused) and wrong
            tn += (not refused) and not wrong
    scores = confusion_scores(tp, fp, fn, tn)
    scores["n_excluded"] = excluded
    return scores


def _single_alpha(records: Sequence[RoutingRecord]) -> float:
    alphas = sorted({round(r.alpha, 6) for r in records})
    if len(alphas) != 1:
        raise ValueError(f"metrics: records must share one alpha, got alphas {alphas}")
    return alphas[0]


def summarize(records: Sequence[RoutingRecord], agents: Sequence[str]) -> dict:
    """All per-method figures for one α and one group of queries (no oracle figures)."""
    records = list(records)
    if not records:
        raise ValueError("summarize: no records")
    alpha = _single_alpha(records)
    n = len(records)
    accuracy = sum(r.correct for r in records) / n
    mean_cost = sum(r.cost for r in records) / n
    unknown = sorted({v.agent for r in records for v in r.visited} - set(agents))
    if unknown:
        raise ValueError(f"summarize: records visit agent(s) {unknown} outside the pool {list(agents)}")
    reached = {a: sum(any(v.agent == a for v in r.visited) for r in records) for a in agents}
    answered = {a: sum(any(v.agent == a and v.decision == ANSWER for v in r.visited) for r in records) for a in agents}
    forced = sum(r.forced_refusal for r in records)
    return {
        "n": n,
        "alpha": alpha,
        "accuracy": accuracy,
        "mean_cost": mean_cost,
        "utility": utility(accuracy, mean_cost, alpha),
        "forced_refusals": forced,
        "forced_refusal_rate": forced / n,
        "final_share": {a: sum(r.final_agent == a for r in records) / n for a in agents},
        "reached": reached,
        "answer_rate": {a: (answered[a] / reached[a] if reached[a] else None) for a in agents},
        "self_assessment": {a: self_assessment(records, a) for a in agents},
    }


def oracle_figures(records: Sequence[RoutingRecord], oracle_index: Mapping[tuple, RoutingRecord]) -> dict:
    """Oracle accuracy/cost/utility on exactly the queries of ``records`` (same α), or ``None``s
    when the oracle was not logged for every one of them."""
    oracle_records = [oracle_index.get((round(r.alpha, 6), r.dataset, r.query_id)) for r in records]
    if not records or any(o is None for o in oracle_records):
        return {"oracle_accuracy": None, "oracle_mean_cost": None, "oracle_utility": None}
    n = len(oracle_records)
    accuracy = sum(o.correct for o in oracle_records) / n
    mean_cost = sum(o.cost for o in oracle_records) / n
    return {
        "oracle_accuracy": accuracy,
        "oracle_mean_cost": mean_cost,
        "oracle_utility": utility(accuracy, mean_cost, _single_alpha(records)),
    }


def evaluate_group(records: Sequence[RoutingRecord], agents: Sequence[str],
                   oracle_index: Mapping[tuple, RoutingRecord]) -> dict:
    """``summarize`` + oracle figures + % of oracle utility, for one method, α and group."""
    figures = summarize(records, agents)
    figures.update(oracle_figures(records, oracle_index))
    figures["pct_oracle_utility"] = percent_of_oracle(figures["utility"], figures["oracle_utility"])
    return figures


def group_records(records: Iterable[RoutingRecord]) -> dict[str, list[RoutingRecord]]:
    """Split records into "all", "in_domain", "out_of_domain" and "dataset:<name>" groups
    (groups without records are left out)."""
    groups: dict[str, list[RoutingRecord]] = {ALL: []}
    for record in records:
        groups[ALL].append(record)
        groups.setdefault(record.domain, []).append(record)
        groups.setdefault(DATASET_PREFIX + record.dataset, []).append(record)
    ordered = [ALL, IN_DOMAIN, OUT_OF_DOMAIN] + sorted(g for g in groups if g.startswith(DATASET_PREFIX))
    return {g: groups[g] for g in ordered if groups.get(g)}
