"""Self-assessment arithmetic: refusal as a detector of "the plain answer would be wrong"."""

import json

import pytest

from disrouter_jax.selfaware import assessment


def test_scores_match_a_hand_counted_confusion_table():
    # query:          0      1      2      3      4      5
    refused = [True, True, False, False, True, False]
    plain_correct = [False, True, True, False, False, True]
    answer_correct = [False, False, True, False, False, False]  # 3 answered: 1 right
    s = assessment.assessment_scores(refused, plain_correct, answer_correct)
    # positive = refuse, label = plain answer wrong: tp = {0, 4}, fp = {1}, fn = {3}, tn = {2, 5}
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (2, 1, 1, 2)
    assert s["n"] == 6
    assert s["refusal_rate"] == pytest.approx(3 / 6)
    assert s["plain_accuracy"] == pytest.approx(3 / 6)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert s["answered_accuracy"] == pytest.approx(1 / 3)


def test_never_refusing_has_no_precision_and_zero_f1():
    s = assessment.assessment_scores([False, False, False], [True, False, False])
    assert s["refusal_rate"] == 0.0
    assert s["precision"] is None
    assert s["recall"] == 0.0
    assert s["f1"] == 0.0
    assert s["accuracy"] == pytest.approx(1 / 3)
    assert "answered_accuracy" not in s


def test_perfect_self_knowledge_scores_one():
    plain_correct = [True, False, True, False]
    refused = [not c for c in plain_correct]
    s = assessment.assessment_scores(refused, plain_correct, [c for c in plain_correct])
    assert s["accuracy"] == 1.0 and s["f1"] == 1.0 and s["answered_accuracy"] == 1.0


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="2 refusal flags but 3"):
        assessment.assessment_scores([True, False], [True, True, False])
    with pytest.raises(ValueError, match="refused query cannot be a correct answer"):
        assessment.assessment_scores([True], [True], [True])


def test_table_lists_refusal_rate_and_scores_per_alpha():
    result = {"plain_accuracy": 0.5,
              "alphas": {"0.2": assessment.assessment_scores([True, True], [False, True], [False, False]),
                         "0.8": assessment.assessment_scores([False, False], [False, True], [False, True])},
              "alphas_vs_reference": {"0.2": assessment.assessment_scores([True, True], [False, False]),
                                      "0.8": assessment.assessment_scores([False, False], [False, False])}}
    lines = assessment.format_table([("toy-xs", "sft", result)], (0.2, 0.8)).splitlines()
    assert lines[0].split() == ["agent", "stage", "plain", "ref@0.2", "ref@0.8", "acc/F1@0.2", "acc/F1@0.8",
                                "vs-pre@0.2", "vs-pre@0.8", "ans.acc@0.2", "ans.acc@0.8"]
    assert lines[1].split() == ["toy-xs", "sft", "0.50", "1.00", "0.00", "0.50/0.67", "0.50/0.00",
                                "1.00/1.00", "0.00/0.00", "-", "0.50"]


def test_cached_assessment_is_reused_only_for_the_same_queries(tmp_path):
    from disrouter_jax.tasks.example import Example

    examples = [Example(task="t", id=str(i), question="q", gold=("a",), answer_type="span") for i in range(2)]
    path = tmp_path / "assessment.json"
    fingerprint = {"query_keys": ["t/0", "t/1"], "alphas": [0.5]}
    path.write_text(json.dumps({"fingerprint": fingerprint, "alphas": {}, "cached": True}))

    def must_not_load():
        raise AssertionError("the cache should have been used")

    assert assessment.ensure_assessment(must_not_load, examples, [0.5], path)["cached"] is True
    with pytest.raises(RuntimeError, match="loader called"):
        assessment.ensure_assessment(lambda: (_ for _ in ()).throw(RuntimeError("loader called")),
                                     examples[:1], [0.5], path)
