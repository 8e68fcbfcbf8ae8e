"""DROP and SQuAD (span answers): real rows, gold alternatives, Hub rows, checking real rows."""

from __future__ import annotations

import json

import pytest

from disrouter_jax.tasks import get_task, load_task
from disrouter_jax.tasks.drop import answer_string

from .conftest import data_dir


@pytest.fixture(scope="module")
def drop_dev():
    return {e.id: e for e in load_task("drop", data_dir("drop"), "validation")}


def test_drop_real_dev_passage(drop_dev):
    assert len(drop_dev) == 19  # the sample's single passage with all its questions
    first = drop_dev["f37e81fa-ef7b-4583-b671-762fc433faa9"]
    assert first.question == "Who scored the first touchdown of the game?"
    assert first.passage.startswith("Hoping to rebound from their loss to the Patriots, the Raiders stayed at home")
    assert first.gold == ("Chaz Schilens", "JaMarcus Russell")  # answer + distinct validated answers
    assert drop_dev["ac6ba235-3024-4f63-a6ab-730a14def4cb"].gold == ("3", "2")
    assert drop_dev["2c7c93f6-69ed-47cc-a5af-94a00c185a26"].gold == ("Raiders", "the Raiders")
    assert drop_dev["01c67c32-9281-4d13-afd2-33aa922994dc"].gold == ("80-yard", "80-yard punt return", "80")
    assert drop_dev["8b442d27-241b-4fd9-87d4-1e5bee19cb2e"].gold == ("29",)


def test_drop_checks_on_real_rows(drop_dev):
    task = get_task("drop")
    kicks = drop_dev["fe7754d3-322e-41b2-b1b7-a9bc0cbca9a2"]  # shortest field goal: 24
    assert task.check(kicks, "The kicks were 33, 30, 53, 24 and 40 yards.\nAnswer: 24").correct
    assert task.check(kicks, "Answer: 24 yards").correct
    assert not task.check(kicks, "Answer: 30 yards").correct
    winner = drop_dev["2c7c93f6-69ed-47cc-a5af-94a00c185a26"]
    assert task.check(winner, "Answer: The Oakland Raiders").correct
    assert not task.check(winner, "Answer: Houston Texans").correct
    assert task.check(winner, "I don't know!").refused


def test_drop_train_file_without_validated_answers():
    path = data_dir("drop") / "hf_datasets_dummy" / "drop_dataset_train.json"
    examples = load_task("drop", path)
    assert [e.gold for e in examples] == [("3",), ("2",), ("28-yard",), ("Mike Williams",), ("Calvin Johnson",)]


def test_drop_answer_strings():
    empty_date = {"day": "", "month": "", "year": ""}
    assert answer_string({"number": "12", "date": empty_date, "spans": []}) == "12"
    assert answer_string({"number": "", "date": {"day": "12", "month": "March", "year": "1998"}, "spans": []}) == "12 March 1998"
    assert answer_string({"number": "", "date": {"day": "", "month": "", "year": "1998"}, "spans": []}) == "1998"
    assert answer_string({"number": "", "date": empty_date, "spans": ["Bob", "Ann"]}) == "Bob, Ann"
    assert answer_string({"number": "", "date": empty_date, "spans": []}) == ""


def test_drop_hub_row_and_empty_answers(tmp_path):
    row = {"section_id": "nfl_1184", "query_id": "q1", "passage": "P.", "question": "Who?",
           "answers_spans": {"spans": ["Chaz Schilens", "JaMarcus Russell", "Chaz Schilens"], "types": ["span"] * 3}}
    assert get_task("drop").from_hf_row(row, 0).gold == ("Chaz Schilens", "JaMarcus Russell")
    empty = {"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": []}
    data = {"p1": {"passage": "P.", "qa_pairs": [
        {"question": "Q?", "query_id": "a", "answer": empty, "validated_answers": []},
        {"question": "Q?", "query_id": "b", "answer": {**empty, "number": "4"}},
    ]}}
    path = tmp_path / "drop_dataset_dev.json"
    path.write_text(json.dumps(data))
    result = get_task("drop").read_local(tmp_path, "validation")
    assert [e.id for e in result.examples] == ["b"] and result.skipped == {"empty answer": 1}


@pytest.fixture(scope="module")
def squad_dev():
    return {e.id: e for e in load_task("squad", data_dir("squad"), "validation")}


def test_squad_real_rows(squad_dev):
    assert len(squad_dev) == 196
    afc = squad_dev["56be4db0acb8001400a502ec"]
    assert afc.question == "Which NFL team represented the AFC at Super Bowl 50?"
    assert afc.gold == ("Denver Broncos",)  # three identical annotations, one alternative
    assert afc.passage.startswith("Super Bowl 50 was an American football game")
    venue = squad_dev["56be4db0acb8001400a502ee"]
    assert venue.gold == ("Santa Clara, California", "Levi's Stadium",
                          "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California.")


def test_squad_checks_with_configurable_threshold(squad_dev):
    task = get_task("squad")
    afc = squad_dev["56be4db0acb8001400a502ec"]
    assert task.check(afc, "Answer: the Denver Broncos.").correct
    verdict = task.check(afc, "Broncos")
    assert verdict.correct and verdict.score == pytest.approx(2 / 3)
    assert not task.check(afc, "Broncos", f1_threshold=0.8).correct
    assert not task.check(afc, "Answer: Carolina Panthers").correct


def test_squad_hub_row():
    row = {"id": "s1", "title": "T", "context": "C.", "question": "Q?", "answers": {"text": ["x", "x", "y"], "answer_start": [0, 0, 2]}}
    assert get_task("squad").from_hf_row(row, 0).gold == ("x", "y")
