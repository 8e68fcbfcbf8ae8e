"""Central-router baselines on synthetic tables where the right routing is known."""

import numpy as np
import pytest

from disrouter_jax.cascade import baselines, metrics, routers
from disrouter_jax.cascade.log import ANSWER, REFUSE, AgentOutcome, OutcomeRow

POOL = ["a0", "a1", "a2", "a3", "a4"]
SKILL = np.array([0.2, 0.4, 0.6, 0.75, 0.9])
FAST = routers.ScorerConfig(steps=300, learning_rate=0.1, seed=0)


def _table(n, seed, alphas=(0.5,), refuse_when_wrong_prob=0.0):
    """Agent k is right when the query's difficulty is below its skill (plus per-agent noise).
    With ``refuse_when_wrong_prob`` some wrong answers become refusals."""
    rng = np.random.default_rng(seed)
    correct_qa = rng.uniform(size=(n, 1)) + 0.15 * rng.normal(size=(n, len(POOL))) < SKILL
    refuse_qa = ~correct_qa & (rng.uniform(size=correct_qa.shape) < refuse_when_wrong_prob)
    rows = []
    for alpha in alphas:
        for q in range(n):
            rows.append(OutcomeRow(f"q{q}", "synthetic", alpha, tuple(
                AgentOutcome(a, REFUSE if refuse_qa[q, k] else ANSWER, bool(correct_qa[q, k]) and not refuse_qa[q, k],
                             answer_features=(float(correct_qa[q, k]), float(rng.normal())))
                for k, a in enumerate(POOL))))
    return rows, correct_qa


def _utility(records):
    return metrics.summarize(records, POOL)["utility"]


@pytest.mark.parametrize("hidden_size", [0, 8])
def test_classifier_router_with_revealing_features_reaches_oracle(hidden_size):
    config = routers.ScorerConfig(hidden_size=hidden_size, steps=300, learning_rate=0.1, seed=0)
    train, train_correct = _table(160, seed=1, alphas=(0.2, 0.5))
    evaluation, eval_correct = _table(80, seed=2, alphas=(0.2, 0.5))
    # features that reveal which agents will be right: the router can be perfect
    router = routers.ClassifierRouter(POOL, config=config).fit(train, np.tile(train_correct, (2, 1)).astype(float))
    records = router.route(evaluation, np.tile(eval_correct, (2, 1)).astype(float))
    oracle = baselines.oracle(evaluation, POOL)
    assert [r.final_agent for r in records] == [r.final_agent for r in oracle]
    for alpha in (0.2, 0.5):
        at = [r for r in records if r.alpha == alpha]
        assert _utility(at) == pytest.approx(_utility([r for r in oracle if r.alpha == alpha]))
        assert 0.0 < router.thresholds[alpha] < 1.0
    assert {r.method for r in records} == {"classifier_router"}


def test_classifier_router_is_deterministic_and_beats_fixed_choices_on_noisy_features():
    train, train_correct = _table(160, seed=3)
    evaluation, eval_correct = _table(80, seed=4)
    rng = np.random.default_rng(0)
    noisy = lambda c: c + 0.8 * rng.normal(size=c.shape)  # noqa: E731 - informative, not perfect
    train_x, eval_x = noisy(train_correct.astype(float)), noisy(eval_correct.astype(float))
    first = routers.ClassifierRouter(POOL, config=FAST).fit(train, train_x).route(evaluation, eval_x)
    second = routers.ClassifierRouter(POOL, config=FAST).fit(train, train_x).route(evaluation, eval_x)
    assert first == second
    assert _utility(first) > max(_utility(baselines.smallest(evaluation, POOL)),
                                 _utility(baselines.largest(evaluation, POOL)))
    assert _utility(first) <= _utility(baselines.oracle(evaluation, POOL)) + 1e-12


def test_classifier_router_rejects_unfitted_alpha_and_misaligned_features():
    train, train_correct = _table(160, seed=5)  # same shape as other fits: reuses the compiled program
    router = routers.ClassifierRouter(POOL, config=FAST).fit(train, train_correct.astype(float))
    other, other_correct = _table(10, seed=6, alphas=(0.8,))
    with pytest.raises(ValueError, match=r"not fitted for alpha=0.8; fitted alphas: \[0.5\]"):
        router.route(other, other_correct.astype(float))
    with pytest.raises(ValueError, match="one entry per row"):
        router.route(train, train_correct[:5].astype(float))


def _first_correct_or_last(row):
    for agent in POOL:
        outcome = row.outcome(agent)
        if outcome.decision == ANSWER and outcome.correct:
            return agent
    return POOL[-1]


def test_frugalgpt_with_revealing_answer_features_reaches_oracle_accuracy():
    train, _ = _table(160, seed=7, refuse_when_wrong_prob=0.3)
    evaluation, _ = _table(80, seed=8, refuse_when_wrong_prob=0.3)
    router = routers.FrugalGPTRouter(POOL, config=FAST, cost_mode="final")
    router.fit(train, routers.answer_features_from_outcomes(train, POOL))
    records = router.route(evaluation, routers.answer_features_from_outcomes(evaluation, POOL))
    # the scorer sees whether each answer is right, so the cascade stops at the first right answer
    assert [r.final_agent for r in records] == [_first_correct_or_last(row) for row in evaluation]
    oracle = metrics.summarize(baselines.oracle(evaluation, POOL), POOL)
    assert metrics.summarize(records, POOL)["accuracy"] == pytest.approx(oracle["accuracy"])
    # refusals are never accepted before the last agent, even with a low threshold
    for row, record in zip(evaluation, records):
        for visit in record.visited[:-1]:
            assert visit.decision == REFUSE or not row.outcome(visit.agent).correct


def test_frugalgpt_cumulative_cost_and_determinism():
    train, _ = _table(120, seed=9)
    evaluation, _ = _table(40, seed=10)
    features = routers.answer_features_from_outcomes
    first = routers.FrugalGPTRouter(POOL, config=FAST).fit(train, features(train, POOL))
    records = first.route(evaluation, features(evaluation, POOL))
    costs = metrics.pool_costs(POOL)
    for record in records:
        assert record.cost == pytest.approx(sum(costs[v.agent] for v in record.visited))
        assert [v.agent for v in record.visited] == POOL[: len(record.visited)]
    second = routers.FrugalGPTRouter(POOL, config=FAST).fit(train, features(train, POOL))
    assert records == second.route(evaluation, features(evaluation, POOL))
    assert first.thresholds[0.5].shape == (len(POOL),)


def test_fit_scorer_learns_a_separable_rule():
    rng = np.random.default_rng(0)
    x_nf = rng.normal(size=(200, 3))
    y_nk = (x_nf[:, :1] > 0).astype(float)
    scorer = routers.fit_scorer(x_nf, y_nk, None, FAST)
    assert ((scorer.predict(x_nf) > 0.5) == (y_nk > 0.5)).mean() > 0.97
    with pytest.raises(ValueError, match="equal N"):
        routers.fit_scorer(x_nf, y_nk[:10], None, FAST)


def test_query_features_are_aligned_by_key():
    rows, _ = _table(3, seed=11, alphas=(0.2, 0.5))
    keys = [("synthetic", "q2"), ("synthetic", "q0"), ("synthetic", "q1")]
    features_qd = np.array([[2.0], [0.0], [1.0]])
    assert routers.query_features_for(rows, keys, features_qd)[:, 0].tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match="no features for 1 queries"):
        routers.query_features_for(rows, keys[:2], features_qd[:2])
