"""Every compared method's routing records from outcome tables — no model runs here.

Used by the live evaluation (``cascade.evaluation``) and by its replay mode alike, so a
replayed sub-pool is scored by exactly the same code as the full run.

* :func:`baseline_records`: Smallest, Largest, Random (uniform, cost-matched), Oracle.
* :func:`router_records`: the central routers (classifier on per-query features; FrugalGPT on
  per-answer features), fitted on one set of rows and routing another.
* :func:`subpool_rows`: an outcome table for any sub-pool exactly as the engine would run it — the
  sub-pool's last agent gets the plain prompt, so its plain reply replaces its scenario reply.
* :func:`with_forced_labels`: give the live cascade's refusals their forced answers' correctness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from disrouter_jax.cascade import assessors, baselines, routers
from disrouter_jax.cascade.engine import ANSWER_FEATURE_NAMES, mode_key
from disrouter_jax.cascade.log import ANSWER, REFUSE, OutcomeRow, RoutingRecord


def baseline_records(names: Sequence[str], rows: Sequence[OutcomeRow], pool: Sequence[str],
                     costs: Mapping[str, float], cascade_records: Sequence[RoutingRecord],
                     seed: int) -> list[RoutingRecord]:
    """The baselines ``names`` (see ``baselines.BASELINES``) on ``rows``; the cost-matched random
    follows the mean cost of ``cascade_records`` at each α."""
    unknown = sorted(set(names) - set(baselines.BASELINES))
    if unknown:
        raise ValueError(f"config.eval.baselines: unknown baseline(s) {unknown}; known: {baselines.BASELINES}")
    made = {
        baselines.SMALLEST: lambda: baselines.smallest(rows, pool, costs),
        baselines.LARGEST: lambda: baselines.largest(rows, pool, costs),
        baselines.RANDOM_UNIFORM: lambda: baselines.random_uniform(rows, pool, costs, seed),
        baselines.RANDOM_COST_MATCHED: lambda: baselines.random_cost_matched(
            rows, pool, costs, baselines.mean_cost_by_alpha(cascade_records), seed),
        baselines.ORACLE: lambda: baselines.oracle(rows, pool, costs),
    }
    return [record for name in names for record in made[name]()]


ROUTERS = (routers.CLASSIFIER_ROUTER, routers.FRUGALGPT)


def router_records(names: Sequence[str], scorer: routers.ScorerConfig, pool: Sequence[str],
                   costs: Mapping[str, float], fit_rows: Sequence[OutcomeRow], eval_rows: Sequence[OutcomeRow],
                   query_features: Callable[[Sequence[OutcomeRow]], object]
                   ) -> tuple[list[RoutingRecord], dict, dict]:
    """Routers ``names`` fitted on ``fit_rows`` and routing ``eval_rows``; returns the records,
    what was learned (thresholds per α) and the classifier's per-agent judgements scored as an
    assessor of every agent but the last (``assessors.external_assessors``).
    ``query_features(rows) -> [R, D]`` for the classifier."""
    unknown = sorted(set(names) - set(ROUTERS))
    if unknown:
        raise ValueError(f"config.eval.routers: unknown router(s) {unknown}; known: {ROUTERS}")
    records, info, judged = [], {}, {}
    if routers.CLASSIFIER_ROUTER in names:
        router = routers.ClassifierRouter(pool, costs, scorer).fit(fit_rows, query_features(fit_rows))
        eval_features = query_features(eval_rows)
        records += router.route(eval_rows, eval_features)
        info[routers.CLASSIFIER_ROUTER] = {"thresholds": {mode_key(a): t for a, t in router.thresholds.items()}}
        judged[routers.CLASSIFIER_ROUTER] = assessors.external_assessors(
            eval_rows, pool[:-1], pool, router.capable(eval_rows, eval_features))
    if routers.FRUGALGPT in names:
        router = routers.FrugalGPTRouter(pool, costs, scorer)
        router.fit(fit_rows, routers.answer_features_from_outcomes(fit_rows, pool))
        records += router.route(eval_rows, routers.answer_features_from_outcomes(eval_rows, pool))
        info[routers.FRUGALGPT] = {
            "thresholds": {mode_key(a): [float(x) for x in t] for a, t in router.thresholds.items()},
            "cost_mode": router.cost_mode, "answer_features": list(ANSWER_FEATURE_NAMES)}
    return records, info, judged


def subpool_rows(scenario_rows: Sequence[OutcomeRow], plain_rows: Sequence[OutcomeRow],
                 subpool: Sequence[str]) -> list[OutcomeRow]:
    """Outcome rows of ``subpool`` (cascade order) as the engine would produce them: scenario
    replies for all but the last agent, the last agent's plain reply (its own forced answer, so a
    refusal there is labelled wrong). ``plain_rows`` must hold the same (α, query) keys."""
    if not subpool:
        raise ValueError("subpool_rows: empty sub-pool")
    plain_by_key = {row.key: row for row in plain_rows}
    out = []
    for row in scenario_rows:
        plain = plain_by_key.get(row.key)
        if plain is None:
            raise ValueError(f"subpool_rows: no plain-prompt row for alpha={row.alpha} dataset={row.dataset!r} "
                             f"query_id={row.query_id!r}")
        last = plain.outcome(subpool[-1])
        if last.decision == REFUSE:
            last = dataclasses.replace(last, forced_correct=False)
        outcomes = tuple(row.outcome(a) for a in subpool[:-1]) + (last,)
        out.append(dataclasses.replace(row, outcomes=outcomes))
    return out


def with_forced_labels(record: RoutingRecord, plain_correct: Mapping[tuple[str, str, str], bool]) -> RoutingRecord:
    """``record`` with each refusal's unknown correctness filled from ``plain_correct[(agent,
    dataset, query_id)]`` (its plain-prompt reply was a correct answer)."""
    visits = []
    for visit in record.visited:
        key = (visit.agent, record.dataset, record.query_id)
        if visit.decision == REFUSE and visit.correct is None and key in plain_correct:
            visit = dataclasses.replace(visit, correct=bool(plain_correct[key]))
        visits.append(visit)
    return dataclasses.replace(record, visited=tuple(visits))


def route_signature(record: RoutingRecord) -> tuple:
    """What two runs of the same routing must agree on: visited agents, decisions, correctness."""
    return tuple((v.agent, v.decision) for v in record.visited), record.correct


def plain_correct_index(plain_rows: Sequence[OutcomeRow]) -> dict[tuple[str, str, str], bool]:
    """(agent, dataset, query_id) -> whether that agent's plain reply is a correct answer."""
    return {(o.agent, row.dataset, row.query_id): o.decision == ANSWER and o.correct
            for row in plain_rows for o in row.outcomes}
