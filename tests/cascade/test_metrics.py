"""Metrics on the hand-built routing log, checked against arithmetic done by hand."""

import pytest

from disrouter_jax.cascade import metrics
from disrouter_jax.cascade.log import ANSWER, RoutingRecord, Visit
from tests.cascade.hand_tables import COSTS, POOL, cascade_log_alpha05, oracle_log_alpha05, outcome_rows


def _oracle_index():
    return {(r.alpha, r.dataset, r.query_id): r for r in oracle_log_alpha05()}


def test_default_costs_are_evenly_spaced_from_point_one_to_point_nine():
    assert metrics.default_costs(5) == (0.1, 0.3, 0.5, 0.7, 0.9)
    assert metrics.default_costs(3) == (0.1, 0.5, 0.9)
    assert metrics.default_costs(1) == (0.1,)
    with pytest.raises(ValueError, match="positive int"):
        metrics.default_costs(0)


def test_pool_costs_defaults_and_errors():
    assert metrics.pool_costs(POOL) == COSTS
    assert metrics.pool_costs(["B", "C"], COSTS) == {"B": 0.5, "C": 0.9}
    with pytest.raises(ValueError, match="no cost given for agent"):
        metrics.pool_costs(["A", "D"], COSTS)
    with pytest.raises(ValueError, match="agent 'A'.*-1"):
        metrics.pool_costs(["A"], [-1.0])


def test_summary_of_hand_built_log_matches_hand_arithmetic():
    figures = metrics.evaluate_group(cascade_log_alpha05(), POOL, _oracle_index())
    # correct: q1, q3 -> 2/4; costs 0.1 + 0.5 + 0.9 + 0.9 = 2.4 -> 0.6; utility 0.5 - 0.5*0.6 = 0.2
    assert figures["n"] == 4
    assert figures["accuracy"] == pytest.approx(0.5)
    assert figures["mean_cost"] == pytest.approx(0.6)
    assert figures["utility"] == pytest.approx(0.2)
    # oracle: right on q1 (0.1), q2 (0.9), q3 (0.9); q4 -> A (0.1) wrong: acc 0.75, cost 0.5, util 0.5
    assert figures["oracle_accuracy"] == pytest.approx(0.75)
    assert figures["oracle_mean_cost"] == pytest.approx(0.5)
    assert figures["oracle_utility"] == pytest.approx(0.5)
    assert figures["pct_oracle_utility"] == pytest.approx(40.0)
    assert figures["final_share"] == pytest.approx({"A": 0.25, "B": 0.25, "C": 0.5})
    assert figures["reached"] == {"A": 4, "B": 3, "C": 2}
    assert figures["answer_rate"] == pytest.approx({"A": 1 / 4, "B": 1 / 3, "C": 1 / 2})
    assert figures["forced_refusals"] == 1
    assert figures["forced_refusal_rate"] == pytest.approx(0.25)


def test_self_assessment_of_hand_built_log():
    sa = metrics.summarize(cascade_log_alpha05(), POOL)["self_assessment"]
    # A: q1 answered right (TN), q2 refused & forced wrong (TP), q3 refused, no forced answer
    # (excluded), q4 refused & forced wrong (TP)
    assert (sa["A"]["tp"], sa["A"]["fp"], sa["A"]["fn"], sa["A"]["tn"], sa["A"]["n_excluded"]) == (2, 0, 0, 1, 1)
    assert (sa["A"]["accuracy"], sa["A"]["precision"], sa["A"]["recall"], sa["A"]["f1"]) == (1.0, 1.0, 1.0, 1.0)
    # B: q2 answered wrong (FN), q3 refused but forced right (FP), q4 refused & forced wrong (TP)
    assert (sa["B"]["tp"], sa["B"]["fp"], sa["B"]["fn"], sa["B"]["tn"], sa["B"]["n_excluded"]) == (1, 1, 1, 0, 0)
    assert sa["B"]["accuracy"] == pytest.approx(1 / 3)
    assert sa["B"]["precision"] == pytest.approx(0.5)
    assert sa["B"]["recall"] == pytest.approx(0.5)
    assert sa["B"]["f1"] == pytest.approx(0.5)
    # C: q3 answered right (TN), q4 refused & forced wrong (TP)
    assert (sa["C"]["tp"], sa["C"]["tn"], sa["C"]["n_scored"]) == (1, 1, 2)


def test_confusion_scores_are_none_without_denominator():
    scores = metrics.confusion_scores(tp=0, fp=0, fn=0, tn=3)
    assert scores["accuracy"] == 1.0
    assert scores["precision"] is None and scores["recall"] is None and scores["f1"] is None
    assert metrics.confusion_scores(0, 0, 0, 0)["accuracy"] is None


def test_domain_groups_match_hand_arithmetic():
    groups = metrics.group_records(cascade_log_alpha05())
    assert list(groups) == ["all", "in_domain", "out_of_domain", "dataset:gsm8k", "dataset:squad"]
    inside = metrics.evaluate_group(groups["in_domain"], POOL, _oracle_index())
    # q1 right at 0.1, q2 wrong at 0.5: acc 0.5, cost 0.3, util 0.35; oracle: acc 1, cost 0.5, util 0.75
    assert inside["utility"] == pytest.approx(0.35)
    assert inside["oracle_utility"] == pytest.approx(0.75)
    assert inside["pct_oracle_utility"] == pytest.approx(100 * 0.35 / 0.75)
    outside = metrics.evaluate_group(groups["out_of_domain"], POOL, _oracle_index())
    # q3 right at 0.9, q4 forced refusal at 0.9: util 0.5 - 0.45; oracle 0.5 - 0.5*0.5 = 0.25
    assert outside["utility"] == pytest.approx(0.05)
    assert outside["pct_oracle_utility"] == pytest.approx(20.0)
    assert groups["dataset:squad"] == groups["out_of_domain"]


def test_oracle_figures_are_none_when_oracle_not_logged_and_pct_none_for_nonpositive_oracle():
    figures = metrics.evaluate_group(cascade_log_alpha05(), POOL, {})
    assert figures["oracle_utility"] is None and figures["pct_oracle_utility"] is None
    assert metrics.percent_of_oracle(0.1, 0.0) is None
    assert metrics.percent_of_oracle(0.1, -0.2) is None
    assert metrics.percent_of_oracle(0.1, 0.4) == pytest.approx(25.0)


def test_oracle_agent_picks_cheapest_correct_else_cheapest():
    rows = outcome_rows(0.5)
    assert [metrics.oracle_agent(r, POOL, COSTS) for r in rows] == ["A", "C", "C", "A"]
    # costs, not list order, decide who is cheapest
    assert metrics.oracle_agent(rows[0], ["C", "B"], COSTS) == "B"


def test_routing_cost_modes():
    assert metrics.routing_cost(["A", "B", "C"], COSTS) == pytest.approx(0.9)
    assert metrics.routing_cost(["A", "B", "C"], COSTS, "cumulative") == pytest.approx(1.5)
    with pytest.raises(ValueError, match="cost mode"):
        metrics.routing_cost(["A"], COSTS, "average")


def test_summarize_rejects_mixed_alpha_and_unknown_agents():
    records = cascade_log_alpha05()
    other = RoutingRecord("q9", "gsm8k", 0.2, (Visit("A", ANSWER, True),), "A", "", True, 0.1)
    with pytest.raises(ValueError, match="one alpha"):
        metrics.summarize(records + [other], POOL)
    with pytest.raises(ValueError, match="outside the pool"):
        metrics.summarize(records, ["A", "B"])


def test_alpha_key():
    assert metrics.alpha_key(0.2) == "0.2"
    assert metrics.alpha_key(0.1 + 0.1) == "0.2"
    assert metrics.alpha_key(1) == "1"
