"""Smallest / Largest / Random / Oracle on the hand-built table."""

import numpy as np
import pytest

from disrouter_jax.cascade import baselines, metrics
from disrouter_jax.cascade.log import ANSWER, AgentOutcome, OutcomeRow
from tests.cascade.hand_tables import COSTS, POOL, oracle_log_alpha05, outcome_rows


def test_smallest_and_largest_by_hand():
    small = metrics.summarize(baselines.smallest(outcome_rows(0.5), POOL, COSTS), POOL)
    # A answers only q1 (right), refuses q2-q4 (forced refusals): acc 0.25, cost 0.1, util 0.2
    assert (small["accuracy"], small["mean_cost"], small["forced_refusals"]) == (0.25, 0.1, 3)
    assert small["utility"] == pytest.approx(0.2)
    large = metrics.summarize(baselines.largest(outcome_rows(0.5), POOL, COSTS), POOL)
    # C right on q1-q3, refuses q4: acc 0.75, cost 0.9, util 0.75 - 0.45
    assert (large["accuracy"], large["mean_cost"], large["forced_refusals"]) == (0.75, 0.9, 1)
    assert large["utility"] == pytest.approx(0.3)
    assert large["final_share"] == {"A": 0.0, "B": 0.0, "C": 1.0}


def test_oracle_equals_hand_built_oracle_log():
    assert baselines.oracle(outcome_rows(0.5), POOL, COSTS) == oracle_log_alpha05()


def _many_rows(n=300, alpha=0.5):
    return [OutcomeRow(f"q{i}", "d", alpha, tuple(AgentOutcome(a, ANSWER, i % 2 == 0) for a in POOL))
            for i in range(n)]


def test_random_uniform_is_seeded_and_roughly_uniform():
    rows = _many_rows()
    first = baselines.random_uniform(rows, POOL, COSTS, seed=3)
    shuffled = baselines.random_uniform(list(reversed(rows)), POOL, COSTS, seed=3)
    # same seed -> same choice per query, whatever order the rows come in
    assert {r.query_id: r.final_agent for r in first} == {r.query_id: r.final_agent for r in shuffled}
    other = baselines.random_uniform(rows, POOL, COSTS, seed=4)
    assert [r.final_agent for r in first] != [r.final_agent for r in other]
    share = metrics.summarize(first, POOL)["final_share"]
    assert all(abs(share[a] - 1 / 3) < 0.1 for a in POOL)


def test_cost_matched_probabilities_hit_the_target_with_maximum_entropy():
    costs_a = np.array([0.1, 0.5, 0.9])
    for target in (0.2, 0.5, 0.77):
        p_a = baselines.cost_matched_probabilities(costs_a, target)
        assert p_a.sum() == pytest.approx(1.0)
        assert p_a @ costs_a == pytest.approx(target, abs=1e-9)
    # the mean of the costs is matched by the uniform distribution (maximum entropy)
    assert baselines.cost_matched_probabilities(costs_a, 0.5) == pytest.approx(np.full(3, 1 / 3))
    assert baselines.cost_matched_probabilities(costs_a, 0.0) == pytest.approx([1, 0, 0])
    assert baselines.cost_matched_probabilities(costs_a, 2.0) == pytest.approx([0, 0, 1])


def test_random_cost_matched_realises_the_target_cost():
    rows = _many_rows(301) + _many_rows(301, alpha=0.2)
    records = baselines.random_cost_matched(rows, POOL, COSTS, {0.5: 0.62, 0.2: 0.3}, seed=0)
    by_alpha = baselines.mean_cost_by_alpha(records)
    # counts are rounded to whole queries: off by at most one query's cost spread
    assert by_alpha[0.5] == pytest.approx(0.62, abs=0.8 / 301)
    assert by_alpha[0.2] == pytest.approx(0.3, abs=0.8 / 301)
    assert records == baselines.random_cost_matched(rows, POOL, COSTS, {0.5: 0.62, 0.2: 0.3}, seed=0)
    with pytest.raises(ValueError, match="no target cost for alpha=0.2"):
        baselines.random_cost_matched(rows, POOL, COSTS, {0.5: 0.62})


def test_baselines_use_cheapest_and_dearest_by_cost_not_order():
    rows = outcome_rows(0.5)
    reversed_pool = ["C", "B", "A"]
    assert {r.final_agent for r in baselines.smallest(rows, reversed_pool, COSTS)} == {"A"}
    assert {r.final_agent for r in baselines.largest(rows, reversed_pool, COSTS)} == {"C"}
