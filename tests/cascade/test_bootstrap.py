"""Paired bootstrap intervals: what they must contain, pairing, and their place in the report."""

import numpy as np
import pytest

from disrouter_jax.cascade import bootstrap, report
from disrouter_jax.cascade.log import ANSWER, IN_DOMAIN, RoutingRecord, Visit
from tests.cascade.hand_tables import COSTS, POOL, cascade_log_alpha05, oracle_log_alpha05


def _records(method, correct, costs, alpha=0.5):
    return [RoutingRecord(f"q{i}", "gsm8k", alpha, (Visit("A", ANSWER, bool(c)),), "A", "x", bool(c), float(cost),
                          IN_DOMAIN, method=method) for i, (c, cost) in enumerate(zip(correct, costs))]


def test_a_method_better_on_every_query_has_an_interval_above_zero():
    rng = np.random.default_rng(0)
    correct = rng.random(400) < 0.5
    worse = _records("smallest", correct, [0.5] * 400)
    better = _records("disrouter", correct, [0.1] * 400)  # same answers, always cheaper: +0.2 per query
    out = bootstrap.paired_intervals(worse + better)
    diff = out["difference"]["smallest"]
    assert diff["mean"] == pytest.approx(0.2)
    assert diff["ci"] == pytest.approx([0.2, 0.2])  # a constant difference has no spread, paired
    assert diff["p_not_above"] == 0.0 and diff["n"] == 400
    # each method's own utility varies with its correctness (unpaired width ~ 2 * 1.96 * 0.5 / 20)
    lo, hi = out["utility"]["disrouter"]
    assert lo < correct.mean() - 0.05 < hi
    assert 0.08 < hi - lo < 0.12


def test_interval_width_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    a, b = rng.random(900) < 0.6, rng.random(900) < 0.5
    out = bootstrap.paired_intervals(_records("disrouter", a, [0.0] * 900) + _records("largest", b, [0.0] * 900))
    d = a.astype(float) - b.astype(float)
    expected = 2 * 1.96 * d.std() / np.sqrt(len(d))
    lo, hi = out["difference"]["largest"]["ci"]
    assert hi - lo == pytest.approx(expected, rel=0.15)
    assert lo < d.mean() < hi


def test_identical_methods_differ_by_exactly_zero():
    correct = [True, False, True, True]
    out = bootstrap.paired_intervals(_records("disrouter", correct, [0.3] * 4) + _records("random", correct, [0.3] * 4))
    assert out["difference"]["random"]["ci"] == [0.0, 0.0]
    assert out["difference"]["random"]["p_not_above"] == 1.0


def test_records_of_several_alphas_are_refused():
    with pytest.raises(ValueError, match="one alpha"):
        bootstrap.paired_intervals(_records("disrouter", [True], [0.1], 0.2) + _records("x", [True], [0.1], 0.5))


def test_report_carries_intervals_and_the_table_prints_them():
    built = report.build_report(cascade_log_alpha05() + oracle_log_alpha05(), POOL, COSTS)
    figures = built["results"]["0.5"]["all"]
    lo, hi = figures["disrouter"]["utility_ci"]
    assert lo <= figures["disrouter"]["utility"] <= hi
    # oracle: q1 0.95, q2 0.55, q3 0.55, q4 -0.05 (wrong, cost 0.1); disrouter 0.95, -0.25, 0.55, -0.45
    assert figures["oracle"]["vs_disrouter"]["mean"] == pytest.approx((0.0 - 0.8 + 0.0 - 0.4) / 4)
    assert "vs_disrouter" not in figures["disrouter"]
    table = report.format_summary_table(built, ["all"])
    assert "95% CI" in table and f"[{lo:.3f}, {hi:.3f}]" in table
