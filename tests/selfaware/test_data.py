"""Tests for labelled records, SFT targets, tokenized layout, bucketing and the alpha schedule."""

import json
from collections import Counter

import numpy as np
import pytest

from disrouter_jax.selfaware import data as D
from disrouter_jax.tasks.prompts import REFUSAL


def _record(qid, p, n=10, agent="agent0", task="gsm8k", **kw):
    k = round(p * n)
    fields = dict(agent=agent, task=task, query_id=str(qid), p_correct=k / n, num_samples=n,
                  correct_response=f"answer {qid}" if k > 0 else None, prompt_question=f"question {qid}",
                  gold=str(qid))
    fields.update(kw)
    return D.LabelRecord(**fields)


# ------------------------------------------------------------------ LabelRecord + JSONL


def test_jsonl_round_trip(tmp_path):
    records = [_record(1, 0.3), _record(2, 0.0), _record("x", 1.0, n=8, gold=["3", "three"],
                                                        meta={"temperature": 0.7})]
    path = tmp_path / "labels" / "agent0.jsonl"
    assert D.write_labels_jsonl(path, records) == 3
    assert D.read_labels_jsonl(path) == records
    assert sorted(p.name for p in path.parent.iterdir()) == ["agent0.jsonl"]  # no temp file left


def test_write_refuses_to_clobber_unless_overwrite(tmp_path):
    path = tmp_path / "labels.jsonl"
    D.write_labels_jsonl(path, [_record(1, 0.5)])
    with pytest.raises(FileExistsError, match="labels.jsonl"):
        D.write_labels_jsonl(path, [_record(2, 0.5)])
    assert [r.query_id for r in D.read_labels_jsonl(path)] == ["1"]
    D.write_labels_jsonl(path, [_record(2, 0.5)], overwrite=True)
    assert [r.query_id for r in D.read_labels_jsonl(path)] == ["2"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "labels.jsonl"
    D.write_labels_jsonl(path, [_record(1, 0.5)])
    with pytest.raises(TypeError):
        D.write_labels_jsonl(path, [_record(2, 0.5), "not a record"], overwrite=True)
    assert [r.query_id for r in D.read_labels_jsonl(path)] == ["1"]
    assert [p.name for p in tmp_path.iterdir()] == ["labels.jsonl"]


@pytest.mark.parametrize("bad_line,message", [
    ("{not json", "bad label record"),
    ('{"agent": "a"}', "missing field"),
    ("[1, 2]", "JSON object"),
])
def test_read_bad_line_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "labels.jsonl"
    good = json.dumps(_record(1, 0.5).to_json_dict())
    path.write_text(good + "\n\n" + bad_line + "\n")
    with pytest.raises(D.LabelFileError, match=rf"labels\.jsonl:3: .*{message}"):
        D.read_labels_jsonl(path)


def test_read_rejects_unknown_field_invalid_value_and_duplicates(tmp_path):
    good = _record(1, 0.5).to_json_dict()
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({**good, "p_corect": 0.5}) + "\n")
    with pytest.raises(D.LabelFileError, match=r"a\.jsonl:1: .*unknown field.*p_corect"):
        D.read_labels_jsonl(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "query_id": "2", "p_correct": 1.5}) + "\n")
    with pytest.raises(D.LabelFileError, match=r"a\.jsonl:2: .*p_correct"):
        D.read_labels_jsonl(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(D.LabelFileError, match=r"a\.jsonl:2: duplicate .*line 1"):
        D.read_labels_jsonl(path)


@pytest.mark.parametrize("overrides,field", [
    (dict(p_correct=0.5, correct_response=None), "correct_response"),
    (dict(p_correct=0.0, correct_response="x"), "p_correct=0"),
    (dict(p_correct=0.35, num_samples=10), "k/10"),
    (dict(num_samples=0), "num_samples"),
    (dict(query_id=""), "query_id"),
    (dict(p_correct=0.5, correct_response=REFUSAL), "refusal"),
])
def test_label_record_validation(overrides, field):
    fields = _record(1, 0.5).to_json_dict()
    fields.update(overrides)
    with pytest.raises(ValueError, match=field):
        D.LabelRecord(**fields)


# ------------------------------------------------------------------ SFT targets


def test_delta_boundary_p_equal_delta_answers():
    # 1 - 0.7 is 0.30000000000000004 in floating point; p = 3/10 must still answer.
    assert D.should_answer(3 / 10, 0.7)
    assert not D.should_answer(2 / 10, 0.7)
    for alpha, p in [(0.2, 8 / 10), (0.5, 4 / 8), (0.8, 2 / 10)]:
        assert D.should_answer(p, alpha) and not D.should_answer(p - 0.1, alpha)
    assert D.should_answer(1.0, 0.0) and not D.should_answer(0.9, 0.0)


def test_sft_targets_labels_follow_delta():
    records = [_record(i, p) for i, p in enumerate([0.0, 0.1, 0.4, 0.5, 0.6, 1.0])]
    examples = D.sft_targets(records, alpha=0.5, balance=None, seed=0)
    by_id = {e.query_id: e for e in examples}
    assert len(examples) == 6
    for r in records:
        e = by_id[r.query_id]
        assert e.answers == (r.p_correct >= 0.5)
        assert e.response == (r.correct_response if e.answers else REFUSAL)
        assert e.alpha == 0.5 and e.prompt_question == r.prompt_question and e.p_correct == r.p_correct


def _mixed_records(num_accept, num_reject):
    return ([_record(f"a{i}", 0.9) for i in range(num_accept)]
            + [_record(f"r{i}", 0.1) for i in range(num_reject)])


@pytest.mark.parametrize("num_accept,num_reject,balance,expected", [
    (30, 10, 0.5, (10, 10)),
    (10, 30, 0.5, (10, 10)),
    (30, 10, 0.75, (30, 10)),
    (30, 30, 0.25, (10, 30)),
    (12, 40, 0.6, (12, 8)),
])
def test_sft_targets_balance_ratio(num_accept, num_reject, balance, expected):
    examples = D.sft_targets(_mixed_records(num_accept, num_reject), alpha=0.5, balance=balance, seed=3)
    counts = Counter(e.answers for e in examples)
    assert (counts[True], counts[False]) == expected
    assert len({e.query_id for e in examples}) == len(examples)


def test_sft_targets_max_examples_keeps_ratio():
    examples = D.sft_targets(_mixed_records(40, 100), alpha=0.5, balance=0.5, seed=0, max_examples=20)
    counts = Counter(e.answers for e in examples)
    assert (counts[True], counts[False]) == (10, 10)


def test_sft_targets_deterministic_from_seed_and_independent_of_input_order():
    records = _mixed_records(50, 20)
    first = D.sft_targets(records, alpha=0.5, seed=7)
    assert first == D.sft_targets(list(reversed(records)), alpha=0.5, seed=7)
    other = D.sft_targets(records, alpha=0.5, seed=8)
    assert [e.query_id for e in first] != [e.query_id for e in other]
    assert {e.query_id for e in first if e.answers} != {e.query_id for e in other if e.answers}
    assert [e.answers for e in first] != sorted(e.answers for e in first)  # shuffled, not grouped


def test_sft_targets_single_class_raises_unless_unbalanced():
    records = _mixed_records(5, 0)
    with pytest.raises(ValueError, match="5 answer and 0 refusal"):
        D.sft_targets(records, alpha=0.5, seed=0)
    assert len(D.sft_targets(records, alpha=0.5, balance=None, seed=0)) == 5
    assert len(D.sft_targets(records, alpha=0.5, balance=1.0, seed=0)) == 5


def test_sft_targets_alpha_one_drops_p_zero_records():
    records = [_record(1, 0.0), _record(2, 0.1), _record(3, 1.0)]
    examples = D.sft_targets(records, alpha=1.0, balance=None, seed=0)
    assert sorted(e.query_id for e in examples) == ["2", "3"] and all(e.answers for e in examples)
    # alpha = 0: only p == 1 answers.
    examples = D.sft_targets(records, alpha=0.0, balance=None, seed=0)
    assert {e.query_id: e.answers for e in examples} == {"1": False, "2": False, "3": True}


def test_sft_targets_rejects_mixed_agents_duplicates_and_bad_args():
    with pytest.raises(ValueError, match="one agent"):
        D.sft_targets([_record(1, 0.5), _record(2, 0.5, agent="agent1")], alpha=0.5, seed=0)
    with pytest.raises(ValueError, match="duplicate"):
        D.sft_targets([_record(1, 0.5), _record(1, 0.1)], alpha=0.5, seed=0)
    with pytest.raises(ValueError, match="alpha"):
        D.sft_targets([_record(1, 0.5)], alpha=1.2, seed=0)
    with pytest.raises(ValueError, match="balance"):
        D.sft_targets([_record(1, 0.5)], alpha=0.5, balance=1.5, seed=0)


def _graded_records():
    """p = 0, 0.3, 0.6, 0.9 (10 each): 10 / 20 / 30 answer labels at alpha = 0.2 / 0.5 / 0.8."""
    return [_record(f"{p}-{i}", p) for p in (0.0, 0.3, 0.6, 0.9) for i in range(10)]


def _shares(examples):
    by_alpha = {}
    for e in examples:
        by_alpha.setdefault(e.alpha, Counter())[e.answers] += 1
    return {a: (c[True], c[False]) for a, c in sorted(by_alpha.items())}


def test_scenario_targets_pooled_balances_the_union_and_keeps_each_alphas_answer_rate():
    examples = D.scenario_targets(_graded_records(), alphas=(0.2, 0.5, 0.8), balance=0.5, scope=D.POOLED, seed=0)
    # 60 answer labels vs 60 refusal labels over the three scenarios: already 50/50, nothing cut.
    assert _shares(examples) == {0.2: (10, 30), 0.5: (20, 20), 0.8: (30, 10)}
    for e in examples:  # every target is its scenario's label: answer iff p >= 1 - alpha
        assert e.answers == (e.p_correct >= 1 - e.alpha - 1e-9)
        assert e.response == (f"answer {e.query_id}" if e.answers else REFUSAL)


def test_scenario_targets_pooled_cuts_the_majority_over_all_scenarios():
    records = _graded_records() + [_record(f"zero-{i}", 0.0) for i in range(40)]  # 60 answers : 180 refusals
    examples = D.scenario_targets(records, alphas=(0.2, 0.5, 0.8), balance=0.5, scope=D.POOLED, seed=1)
    shares = _shares(examples)
    assert sum(a for a, _ in shares.values()) == sum(r for _, r in shares.values()) == 60
    assert [a for a, _ in shares.values()] == [10, 20, 30]  # the minority class is kept whole
    refusal_rates = [r / (a + r) for a, r in shares.values()]
    assert refusal_rates[0] > refusal_rates[1] > refusal_rates[2]  # Cost First refuses least
    capped = D.scenario_targets(records, alphas=(0.2, 0.5, 0.8), balance=0.5, scope=D.POOLED, seed=1,
                                max_examples=30)
    assert Counter(e.answers for e in capped) == Counter({True: 15, False: 15})


def test_scenario_targets_per_alpha_balances_each_scenario():
    examples = D.scenario_targets(_graded_records(), alphas=(0.2, 0.5, 0.8), balance=0.5, scope=D.PER_ALPHA,
                                  seed=0)
    assert _shares(examples) == {0.2: (10, 10), 0.5: (20, 20), 0.8: (10, 10)}
    assert len(D.scenario_targets(_graded_records(), alphas=(0.2, 0.8), balance=0.5, scope=D.PER_ALPHA, seed=0,
                                  max_examples=8)) == 8  # 4 per scenario


def test_scenario_targets_one_class_everywhere_is_kept_unbalanced(caplog):
    records = [_record(i, 0.0) for i in range(6)]
    with caplog.at_level("WARNING"):
        examples = D.scenario_targets(records, alphas=(0.2, 0.8), balance=0.5, scope=D.POOLED, seed=0)
    assert _shares(examples) == {0.2: (0, 6), 0.8: (0, 6)}
    assert "not balancing" in caplog.text and "agent0" in caplog.text
    # per scenario: alpha=0.8 has both classes and is balanced, alpha=0.2 has refusals only
    records = [_record(i, 0.5) for i in range(4)] + [_record(f"z{i}", 0.0) for i in range(6)]
    examples = D.scenario_targets(records, alphas=(0.2, 0.8), balance=0.5, scope=D.PER_ALPHA, seed=0)
    assert _shares(examples) == {0.2: (0, 10), 0.8: (4, 4)}
    assert D.balance_applies(records, (0.8,), 0.5) and not D.balance_applies(records, (0.2,), 0.5)
    assert not D.balance_applies(records, (0.8,), None) and not D.balance_applies(records, (0.8,), 1.0)


def test_scenario_targets_rejects_unknown_scope_and_no_alphas():
    with pytest.raises(ValueError, match="sft.balance_scope='global'"):
        D.scenario_targets(_graded_records(), alphas=(0.5,), scope="global", seed=0)
    with pytest.raises(ValueError, match="at least one scenario"):
        D.scenario_targets(_graded_records(), alphas=(), seed=0)


# ------------------------------------------------------------------ tokenization + buckets


def test_tokenize_sft_example_mask_covers_exactly_response_and_eos():
    prompt, response, eos = [11, 12, 13], [21, 22], 99
    input_ids, targets, loss_mask = D.tokenize_sft_example(prompt, response, eos, max_len=8)
    np.testing.assert_array_equal(input_ids, [11, 12, 13, 21, 22])
    np.testing.assert_array_equal(targets, [12, 13, 21, 22, 99])
    np.testing.assert_array_equal(loss_mask, [0, 0, 1, 1, 1])
    # Positions whose target is a response token or eos are exactly the masked ones.
    assert [t for t, m in zip(targets, loss_mask) if m] == response + [eos]
    assert input_ids.dtype == np.int32 and targets.dtype == np.int32 and loss_mask.dtype == np.float32


def test_tokenize_sft_example_errors():
    with pytest.raises(ValueError, match="exceeds max_len=4"):
        D.tokenize_sft_example([1, 2, 3], [4, 5], 9, max_len=4)
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        D.tokenize_sft_example([], [4], 9)
    with pytest.raises(ValueError, match="response_ids is empty"):
        D.tokenize_sft_example([1], [], 9)
    with pytest.raises(ValueError, match="token ids"):
        D.tokenize_sft_example([1, -2], [4], 9)


def test_bucket_pad_batch_pads_to_smallest_fitting_bucket():
    a = D.tokenize_sft_example([1, 2], [3], 9)  # length 3
    b = D.tokenize_sft_example([1, 2, 3, 4], [5, 6], 9)  # length 6
    batch = D.bucket_pad_batch([a, b], length_buckets=[16, 4, 8], pad_id=0)
    assert batch.input_ids_bt.shape == (2, 8) and batch.num_dropped == 0
    np.testing.assert_array_equal(batch.input_ids_bt[0], [1, 2, 3, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.targets_bt[0], [2, 3, 9, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.loss_mask_bt[0], [0, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.input_ids_bt[1], [1, 2, 3, 4, 5, 6, 0, 0])
    np.testing.assert_array_equal(batch.loss_mask_bt[1], [0, 0, 0, 1, 1, 1, 0, 0])
    assert batch.loss_mask_bt.sum() == 2 + 3  # response tokens + one eos per example


def test_bucket_pad_batch_drops_too_long_and_pads_batch_dimension():
    short = D.tokenize_sft_example([1], [2], 9)  # length 2
    long = D.tokenize_sft_example([1] * 6, [2] * 4, 9)  # length 10
    batch = D.bucket_pad_batch([long, short, long], length_buckets=[4, 8], pad_id=7, batch_size=3)
    assert batch.num_dropped == 2 and batch.kept_indices == (1,)
    assert batch.input_ids_bt.shape == (3, 4)
    np.testing.assert_array_equal(batch.input_ids_bt[0], [1, 2, 7, 7])
    np.testing.assert_array_equal(batch.input_ids_bt[1:], 7)
    np.testing.assert_array_equal(batch.loss_mask_bt[1:], 0)
    empty = D.bucket_pad_batch([long], length_buckets=[4, 8], pad_id=0, batch_size=2)
    assert empty.num_dropped == 1 and empty.input_ids_bt.shape == (2, 4) and empty.loss_mask_bt.sum() == 0
    with pytest.raises(ValueError, match="batch_size=1"):
        D.bucket_pad_batch([short, short], length_buckets=[4], pad_id=0, batch_size=1)
    with pytest.raises(ValueError, match="length_buckets"):
        D.bucket_pad_batch([short], length_buckets=[], pad_id=0)


# ------------------------------------------------------------------ alpha schedule


def test_alpha_schedule_stratified_and_deterministic():
    alphas = [0.2, 0.5, 0.8]
    drawn = D.alpha_schedule(alphas, 100, seed=1)
    assert drawn.shape == (100,) and set(drawn.tolist()) == set(alphas)
    counts = Counter(drawn.tolist())
    assert sorted(counts.values()) == [33, 33, 34]
    np.testing.assert_array_equal(drawn, D.alpha_schedule(alphas, 100, seed=1))
    assert not np.array_equal(drawn, D.alpha_schedule(alphas, 100, seed=2))
    assert 0.2 in drawn.tolist()  # exactly the configured value, not a float32 approximation
    np.testing.assert_array_equal(D.alpha_schedule([0.5], 4, seed=0), [0.5] * 4)
    assert D.alpha_schedule(alphas, 0, seed=0).shape == (0,)


def test_alpha_schedule_bad_input():
    with pytest.raises(ValueError, match="empty"):
        D.alpha_schedule([], 3, seed=0)
    with pytest.raises(ValueError, match="alphas element"):
        D.alpha_schedule([0.2, 1.3], 3, seed=0)
    with pytest.raises(ValueError, match="n must be"):
        D.alpha_schedule([0.2], -1, seed=0)
