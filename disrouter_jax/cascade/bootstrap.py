"""Paired bootstrap confidence intervals over queries, from routing records alone.

Every method answers the same queries, so the honest uncertainty of "method A beats method B" is
that of the per-query utility *difference*: resample the queries (with replacement, the same
resample for every method) and read the percentiles of each method's mean utility and of each
difference to the reference method (DiSRouter). Per-query utility = correct − α · cost, whose
mean is the group's utility (`metrics.utility`).

`paired_intervals(records, reference, ...)` is a pure function of the records and the seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from disrouter_jax.cascade.log import DISROUTER, RoutingRecord

NUM_RESAMPLES = 2000
LEVEL = 0.95


def per_query_utility(records: Sequence[RoutingRecord]) -> dict[str, dict[tuple[str, str], float]]:
    """{method: {(dataset, query_id): correct - alpha * cost}} for records of one α."""
    alphas = {round(r.alpha, 6) for r in records}
    if len(alphas) != 1:
        raise ValueError(f"per_query_utility: records must share one alpha, got {sorted(alphas)}")
    alpha = alphas.pop()
    out: dict[str, dict[tuple[str, str], float]] = {}
    for r in records:
        out.setdefault(r.method, {})[(r.dataset, r.query_id)] = float(r.correct) - alpha * r.cost
    return out


def _resampled_means(u_q: np.ndarray, num_resamples: int, seed: int) -> np.ndarray:
    """Mean of u_q over `num_resamples` resamples; the resamples depend only on (seed, len(u_q)),
    so methods scored on the same queries are resampled identically (paired)."""
    idx_bq = np.random.default_rng([seed, len(u_q)]).integers(0, len(u_q), size=(num_resamples, len(u_q)))
    return u_q[idx_bq].mean(axis=1)


def _interval(values_b: np.ndarray, level: float) -> list[float]:
    return [float(np.percentile(values_b, 50 * (1 - level))), float(np.percentile(values_b, 50 * (1 + level)))]


def paired_intervals(records: Sequence[RoutingRecord], reference: str = DISROUTER, *,
                     num_resamples: int = NUM_RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict:
    """Intervals for one α and one group of queries::

        {"level", "num_resamples",
         "utility": {method: [lo, hi]},
         "difference": {method: {"mean", "ci": [lo, hi], "n", "p_not_above"}}}

    "difference" is reference minus method on the queries both were scored on ("n" of them);
    "p_not_above" is the share of resamples where it is <= 0. No reference records: no differences.
    """
    utilities = per_query_utility(records)
    out = {"level": level, "num_resamples": num_resamples, "utility": {}, "difference": {}}
    for method, by_key in sorted(utilities.items()):
        u_q = np.array([by_key[k] for k in sorted(by_key)])
        out["utility"][method] = _interval(_resampled_means(u_q, num_resamples, seed), level)
    ref = utilities.get(reference)
    if ref is None:
        return out
    for method, by_key in sorted(utilities.items()):
        common = sorted(set(ref) & set(by_key))
        if method == reference or not common:
            continue
        d_q = np.array([ref[k] - by_key[k] for k in common])
        diff_b = _resampled_means(d_q, num_resamples, seed)
        out["difference"][method] = {"mean": float(d_q.mean()), "ci": _interval(diff_b, level), "n": len(common),
                                     "p_not_above": float((diff_b <= 0).mean())}
    return out
