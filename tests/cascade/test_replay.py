"""Replay of the cascade from an outcome table equals the hand-built and directly computed logs."""

import pytest

from disrouter_jax.cascade import metrics, replay
from disrouter_jax.cascade.log import ANSWER, REFUSE
from tests.cascade.hand_tables import COSTS, POOL, cascade_log_alpha05, outcome_rows


def _direct_cascade(row, pool, costs):
    """Independent, deliberately naive cascade: (final agent, correct, cost)."""
    for position, agent in enumerate(pool):
        outcome = row.outcome(agent)
        last = position == len(pool) - 1
        if outcome.decision == ANSWER or last:
            return agent, outcome.decision == ANSWER and outcome.correct, costs[agent]


def test_replay_reproduces_hand_built_log():
    assert replay.replay_cascade(outcome_rows(0.5), POOL) == cascade_log_alpha05()


def test_replay_equals_direct_computation_for_each_alpha_and_sub_pool():
    rows = outcome_rows(0.5) + outcome_rows(0.2)
    for pool in (POOL, ["A", "C"], ["B", "C"], ["C"]):
        costs = metrics.pool_costs(pool)
        records = replay.replay_cascade(rows, pool)
        for row, record in zip(rows, records):
            assert (record.final_agent, record.correct, record.cost) == _direct_cascade(row, pool, costs)
            assert record.alpha == row.alpha


def test_decisions_depend_on_alpha():
    by_alpha = {a: replay.replay_cascade(outcome_rows(0.5) + outcome_rows(0.2), alpha=a) for a in (0.2, 0.5)}
    # on q1 agent A answers at alpha 0.5 but refuses at alpha 0.2, so B answers
    assert by_alpha[0.5][0].final_agent == "A"
    assert [v.decision for v in by_alpha[0.2][0].visited] == [REFUSE, ANSWER]
    assert by_alpha[0.2][0].cost == pytest.approx(0.5)


def test_sub_pool_renormalises_or_keeps_costs():
    rows = outcome_rows(0.5)
    # [B, C]: q1 B right, q2 B wrong, q3 -> C right, q4 -> C forced refusal; accuracy 0.5
    renormalised = metrics.summarize(replay.replay_cascade(rows, ["B", "C"]), ["B", "C"])
    # costs 0.1 / 0.9: (0.1 + 0.1 + 0.9 + 0.9) / 4 = 0.5 -> utility 0.5 - 0.25
    assert renormalised["mean_cost"] == pytest.approx(0.5)
    assert renormalised["utility"] == pytest.approx(0.25)
    kept = metrics.summarize(replay.replay_cascade(rows, ["B", "C"], COSTS), ["B", "C"])
    # costs 0.5 / 0.9: (0.5 + 0.5 + 0.9 + 0.9) / 4 = 0.7 -> utility 0.5 - 0.35
    assert kept["mean_cost"] == pytest.approx(0.7)
    assert kept["utility"] == pytest.approx(0.15)


def test_unrecorded_alpha_uses_stated_decisions():
    rows = outcome_rows(0.5)
    with pytest.raises(ValueError, match=r"no rows for alpha=0.8; recorded alphas: \[0.5\]"):
        replay.replay_cascade(rows, alpha=0.8)
    records = replay.replay_cascade(rows, alpha=0.8, decisions_alpha=0.5)
    figures = metrics.summarize(records, POOL)
    # same routing as at 0.5 (acc 0.5, cost 0.6), scored at 0.8: 0.5 - 0.48
    assert figures["alpha"] == 0.8
    assert figures["utility"] == pytest.approx(0.02)


def test_cumulative_cost_mode_pays_every_visited_agent():
    records = replay.replay_cascade(outcome_rows(0.5), POOL, cost_mode="cumulative")
    # 0.1, 0.1 + 0.5, 0.1 + 0.5 + 0.9, 0.1 + 0.5 + 0.9
    assert [r.cost for r in records] == pytest.approx([0.1, 0.6, 1.5, 1.5])


def test_table_must_hold_every_agent_of_the_pool():
    rows = outcome_rows(0.5)
    broken = type(rows[0])(rows[0].query_id, rows[0].dataset, 0.5, rows[0].outcomes[:2], rows[0].domain)
    with pytest.raises(ValueError, match="holds agents"):
        replay.table_agents([rows[1], broken])


def test_replay_all_adds_every_label_free_baseline():
    records = replay.replay_all(outcome_rows(0.5), seed=0)
    assert sorted({r.method for r in records}) == sorted(
        ["disrouter", "smallest", "largest", "random_uniform", "random_cost_matched", "oracle"])
    assert all(sum(r.method == m for r in records) == 4 for m in {r.method for r in records})
