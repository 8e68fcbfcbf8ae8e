"""GSM8K: real release rows, Hub rows, bad rows, and checking real-row responses."""

from __future__ import annotations

import json
import logging

import pytest

from disrouter_jax.tasks import get_task, load_task

from .conftest import data_dir

TASK = get_task("gsm8k")


@pytest.fixture(scope="module")
def test_rows():
    return {e.id: e for e in load_task("gsm8k", data_dir("gsm8k"), "test")}


def test_real_test_split_loads_every_row(test_rows):
    assert len(test_rows) == 1319
    assert all(e.answer_type == "number" and e.task == "gsm8k" for e in test_rows.values())


@pytest.mark.parametrize(
    "example_id,question_start,gold",
    [
        ("test-0", "Janet’s ducks lay 16 eggs per day.", "18"),
        ("test-1", "A robe takes 2 bolts of blue fiber", "3"),
        ("test-2", "Josh decides to try flipping a house.", "70000"),
        ("test-4", "Every day, Wendi feeds each of her chickens", "20"),
        ("test-489", "The highest temperature ever recorded in Southlandia is -48", "-10"),
        ("test-611", "John decides to build a program capable of identifying cancer cells.", "1450000"),
        ("test-1318", "Henry and 3 of his friends order 7 pizzas for lunch.", "14"),
    ],
)
def test_real_gold_answers(test_rows, example_id, question_start, gold):
    example = test_rows[example_id]
    assert example.question.startswith(question_start)
    assert example.gold == gold


def test_responses_to_a_real_row(test_rows):
    janet = test_rows["test-0"]
    good = "Janet has 16 - 3 - 4 = 9 eggs left.\nShe sells them for 9 * $2 = $18.\nThe answer is 18."
    assert TASK.check(janet, good).correct
    assert TASK.check(janet, "The answer is $18.00").correct
    assert not TASK.check(janet, "She has 9 eggs left to sell. The answer is 9.").correct
    verdict = TASK.check(janet, "I don't know!")
    assert verdict.refused and not verdict.correct
    assert TASK.check(test_rows["test-611"], "\\boxed{1,450,000}").correct


def test_hub_row_matches_release_row(test_rows):
    row = {"question": test_rows["test-2"].question, "answer": "... 200,000-130,000=$<<200000-130000=70000>>70,000\n#### 70000"}
    example = TASK.from_hf_row(row, index=2)
    assert (example.question, example.gold, example.id) == (test_rows["test-2"].question, "70000", "hub-2")


def test_bad_rows_are_counted_and_skipped(tmp_path, caplog):
    lines = [
        json.dumps({"question": "Q1?", "answer": "1+1=2\n#### 2"}),
        json.dumps({"question": "Q2?"}),  # missing answer
        json.dumps({"question": "Q3?", "answer": "no final marker"}),
        "{not json",
        json.dumps({"question": "Q5?", "answer": "#### many"}),
        json.dumps({"question": "  ", "answer": "#### 5"}),
        json.dumps({"question": "Q7?", "answer": "#### 1,000"}),
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="disrouter_jax.tasks.base"):
        result = TASK.read_local(path)
    assert [(e.id, e.gold) for e in result.examples] == [("test-0", "2"), ("test-6", "1000")]
    assert result.skipped == {"missing field": 1, "no final answer": 1, "invalid JSON": 1, "non-numeric answer": 1, "empty field": 1}
    assert "gsm8k: skipped 5 bad rows" in caplog.text and "test.jsonl:2" in caplog.text


def test_release_directory_picks_the_requested_split(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "T?", "answer": "#### 7"}) + "\n")
    (tmp_path / "train_socratic.jsonl").write_text(json.dumps({"question": "S?", "answer": "#### 8"}) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "E?", "answer": "#### 9"}) + "\n")
    assert [e.gold for e in load_task("gsm8k", tmp_path, "train")] == ["7"]
    assert [e.gold for e in load_task("gsm8k", tmp_path)] == ["9"]  # default split: test
