"""Per-agent assessor F1: the agents judging themselves beside the classifier judging them."""

import numpy as np
import pytest

from disrouter_jax.cascade import assessors, log, report, routers
from tests.cascade.hand_tables import COSTS, POOL, cascade_log_alpha05, outcome_rows


def _counts(scores):
    return {k: scores[k] for k in ("tp", "fp", "fn", "tn")}


def test_self_assessors_score_every_query_with_forced_labels():
    judged = assessors.self_assessors(outcome_rows(0.5) + outcome_rows(0.2), POOL[:-1])
    assert list(judged) == ["0.2", "0.5"]
    at05 = judged["0.5"]
    # q1: A and B answer right (tn); q2: A refuses, forced wrong (tp), B answers wrong (fn).
    assert _counts(at05["in_domain"]["A"]) == {"tp": 1, "fp": 0, "fn": 0, "tn": 1}
    assert _counts(at05["in_domain"]["B"]) == {"tp": 0, "fp": 0, "fn": 1, "tn": 1}
    assert at05["in_domain"]["A"]["f1"] == pytest.approx(1.0)
    assert at05["in_domain"]["B"]["f1"] == pytest.approx(0.0)
    # q3: A refuses with no forced answer (not scored), B refuses but its forced answer is right (fp);
    # q4: both refuse, forced wrong (tp).
    assert at05["out_of_domain"]["A"]["n_scored"] == 1
    assert _counts(at05["out_of_domain"]["B"]) == {"tp": 1, "fp": 1, "fn": 0, "tn": 0}
    assert at05["out_of_domain"]["B"]["f1"] == pytest.approx(2 / 3)
    # At 0.2 A refuses q1 although its forced answer is right: a false alarm.
    assert _counts(judged["0.2"]["in_domain"]["A"]) == {"tp": 1, "fp": 1, "fn": 0, "tn": 0}
    assert "C" not in at05["in_domain"]  # the last agent always answers: it is not an assessor


def test_external_assessors_use_the_rows_own_correctness():
    rows = outcome_rows(0.5)
    capable_ra = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=bool)
    judged = assessors.external_assessors(rows, ["A", "B"], POOL, capable_ra)["0.5"]
    # A: q1 capable and right (tn), q2 judged incapable and wrong (tp); q3 judged capable but A
    # refused there (a refusal is a wrong reply: fn), q4 incapable and wrong (tp).
    assert _counts(judged["in_domain"]["A"]) == {"tp": 1, "fp": 0, "fn": 0, "tn": 1}
    assert _counts(judged["out_of_domain"]["A"]) == {"tp": 1, "fp": 0, "fn": 1, "tn": 0}
    # B: q2 judged capable but answers wrong (fn); q3, q4 incapable and wrong (tp).
    assert _counts(judged["in_domain"]["B"]) == {"tp": 0, "fp": 0, "fn": 1, "tn": 1}
    assert judged["out_of_domain"]["B"]["f1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\[rows, agents\]"):
        assessors.judged_scores(rows, ["A", "B"], capable_ra, np.zeros((4, 3), dtype=object))


def test_classifier_judgements_are_the_ones_it_routes_by():
    rows = outcome_rows(0.5)
    features_rd = np.array([[1.0, 1, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0]])
    router = routers.ClassifierRouter(POOL, COSTS, routers.ScorerConfig(steps=200)).fit(rows, features_rd)
    capable_ra = router.capable(rows, features_rd)
    assert capable_ra.shape == (4, 3) and capable_ra.dtype == bool
    routed = router.route(rows, features_rd)
    for record, capable in zip(routed, capable_ra):
        if capable.any():  # the cheapest agent it judges capable is the one it sends the query to
            assert record.final_agent == POOL[int(np.argmax(capable))]
    # q1's features separate it from the others: the router trusts A there and only there.
    assert capable_ra[0, 0] and not capable_ra[1:, 0].any()


def test_report_keeps_the_assessors_through_recompute_and_prints_them(tmp_path):
    judged = {"disrouter": assessors.self_assessors(outcome_rows(0.5), POOL[:-1]),
              "classifier_router": assessors.external_assessors(
                  outcome_rows(0.5), POOL[:-1], POOL, np.ones((4, 3), dtype=bool))}
    built = report.build_report(cascade_log_alpha05(), POOL, COSTS, assessors=judged)
    assert built["assessors"] == judged
    log.write_routing_log(tmp_path / report.ROUTING_LOG_FILE, cascade_log_alpha05())
    written = report.read_report(report.write_report(tmp_path, built))
    assert report.recompute_report(tmp_path / report.ROUTING_LOG_FILE, written) == written
    table = assessors.format_assessor_table(written["assessors"], "in_domain").splitlines()
    assert "disrouter@0.5" in table[1] and "classifier_router@0.5" in table[1]
    # A: self F1 1.000; the classifier trusting everyone never flags a wrong answer: F1 0.000.
    assert table[2].split() == ["A", "1.000", "0.000"]
    assert assessors.format_assessor_table({}, "in_domain") == ""
