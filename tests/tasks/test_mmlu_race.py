"""MMLU (headerless CSV) and RACE (per-passage JSON files): real rows, Hub rows, bad rows."""

from __future__ import annotations

import json

import pytest

from disrouter_jax.tasks import get_task, load_task

from .conftest import data_dir


@pytest.fixture(scope="module")
def mmlu_test():
    return {e.id: e for e in load_task("mmlu", data_dir("mmlu"), "test")}


def test_mmlu_real_splits(mmlu_test):
    assert len(mmlu_test) == 100
    assert len(load_task("mmlu", data_dir("mmlu"), "validation")) == 11
    assert len(load_task("mmlu", data_dir("mmlu") / "data", "dev")) == 10  # the data.tar root works too


@pytest.mark.parametrize(
    "example_id,gold,options",
    [
        ("abstract_algebra_test-0", "B", ("0", "4", "2", "6")),
        ("abstract_algebra_test-1", "C", ("8", "2", "24", "120")),
        ("abstract_algebra_test-2", "D", ("0", "1", "0,1", "0,4")),  # quoted commas stay inside one option
        ("abstract_algebra_test-99", "C", ("True, True", "False, False", "True, False", "False, True")),
    ],
)
def test_mmlu_real_gold_answers(mmlu_test, example_id, gold, options):
    assert (mmlu_test[example_id].gold, mmlu_test[example_id].options) == (gold, options)


def test_mmlu_multiline_quoted_passages_parse():
    dev = {e.id: e for e in load_task("mmlu", data_dir("mmlu"), "dev")}
    history = dev["high_school_european_history_dev-0"]
    assert history.question.startswith("This question refers to the following information.\nThe following excerpt is from a pamphlet.")
    assert history.options[0] == "Jean Jacques Rousseau" and history.gold == "B"
    assert dev["abstract_algebra_dev-0"].gold == "B"
    assert len([k for k in dev if k.startswith("high_school_european_history_dev-")]) == 5


def test_mmlu_check_and_hub_row(mmlu_test):
    task = get_task("mmlu")
    example = mmlu_test["abstract_algebra_test-99"]
    assert task.check(example, "Statement 1 is true, statement 2 is false. Answer: C").correct
    assert task.check(example, "True, False").correct
    assert not task.check(example, "True, True").correct
    hub = task.from_hf_row({"question": "Find 2+2.", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1}, 7)
    assert (hub.id, hub.gold, hub.options) == ("elementary_mathematics-7", "B", ("3", "4", "5", "6"))


def test_mmlu_bad_rows(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "x_test.csv").write_text('Q1,a,b,c,d,A\nQ2,a,b,c,d,E\nQ3,a,b,c,d\nQ4,a,,c,d,B\n"Q5, with comma",a,b,c,d,D\n')
    result = get_task("mmlu").read_local(tmp_path, "test")
    assert [(e.id, e.gold, e.question) for e in result.examples] == [("x_test-0", "A", "Q1"), ("x_test-4", "D", "Q5, with comma")]
    assert result.skipped == {"gold not among options": 1, "wrong column count": 1, "empty option": 1}


@pytest.fixture(scope="module")
def race_dev():
    return {e.id: e for e in load_task("race", data_dir("race"), "validation")}


def test_race_real_splits(race_dev):
    assert len(race_dev) == 17
    assert len(load_task("race", data_dir("race"), "test")) == 22
    assert len(load_task("race", data_dir("race") / "RACE", "train")) == 22


def test_race_real_gold_answers(race_dev):
    colour = [race_dev[f"dev/middle/13-{q}"] for q in range(5)]
    assert [e.gold for e in colour] == ["A", "C", "A", "D", "B"]
    assert colour[0].passage.startswith("What is color? Why do some of the things around us look red")
    assert colour[0].question == "When something reflects light, we can   _  ."  # cloze blank kept
    assert colour[0].options == ("see its color", "see its heat", "not see its color", "see nothing")
    assert colour[4].options[1] == "Color"
    blacksmith = race_dev["dev/high/73-0"]
    assert blacksmith.gold == "C" and blacksmith.options[2] == "All roads lead to Rome."
    assert get_task("race").check(blacksmith, "C. All roads lead to Rome.").correct


def test_race_hub_row():
    row = {"example_id": "high73.txt", "article": "A story.", "question": "Moral?", "options": ["a", "b", "c", "d"], "answer": "C"}
    example = get_task("race").from_hf_row(row, 3)
    assert (example.id, example.passage, example.gold) == ("high73.txt-3", "A story.", "C")


def test_race_bad_question_skips_only_that_question(tmp_path):
    folder = tmp_path / "test" / "high"
    folder.mkdir(parents=True)
    passage = {"id": "high1.txt", "article": "Text.", "questions": ["Q0", "Q1", "Q2"],
               "options": [["a", "b", "c", "d"], ["a", "b", "c"], ["a", "b", "c", "d"]], "answers": ["B", "A"]}
    (folder / "1.txt").write_text(json.dumps(passage))
    (folder / "2.txt").write_text("{broken")
    result = get_task("race").read_local(tmp_path, "test")
    assert [(e.id, e.gold) for e in result.examples] == [("test/high/1-0", "B")]
    assert result.skipped == {"wrong option count": 1, "missing field": 1, "invalid JSON": 1}
