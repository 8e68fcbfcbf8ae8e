"""CosmosQA (CSV), HellaSwag (JSONL) and HEAD-QA (exam JSON): real rows, Hub rows, bad rows."""

from __future__ import annotations

import json

import pytest

from disrouter_jax.tasks import get_task, load_task

from .conftest import data_dir


@pytest.fixture(scope="module")
def cosmos():
    return load_task("cosmosqa", data_dir("cosmosqa"), "validation")


def test_cosmosqa_real_rows(cosmos):
    assert len(cosmos) == 200
    first = cosmos[0]
    assert first.id.endswith("##q1_a1##378G7J1SJNCDAAIN46FM2P7T6KZEW2")
    assert first.passage.startswith("Do i need to go for a legal divorce ?")
    assert first.question == "Why is this person asking about divorce ?"
    assert first.gold == "B" and first.options[1] == "He wants to get married to a different person ."
    assert cosmos[2].gold == "A" and cosmos[2].options[0] == "An ambulance would likely come to the scene"
    assert cosmos[3].gold == "D" and cosmos[3].options[3] == "Medical personnel would come to help the old man"
    assert cosmos[-1].gold == "A" and cosmos[-1].options[0] == "They do not have the patience to sweat it all out"


def test_cosmosqa_hub_rows_and_unlabelled_test_rows(tmp_path):
    task = get_task("cosmosqa")
    row = {"id": "c1", "context": "Ctx.", "question": "Why?", "answer0": "a", "answer1": "b", "answer2": "c", "answer3": "d", "label": 3}
    assert task.from_hf_row(row, 0).gold == "D"
    result = task.read_hf_rows([row, {**row, "id": "c2", "label": -1}, {**row, "id": "c3", "answer2": ""}])
    assert [e.id for e in result.examples] == ["c1"]
    assert result.skipped == {"gold not among options": 1, "empty option": 1}


@pytest.fixture(scope="module")
def hellaswag():
    return {e.id: e for e in load_task("hellaswag", data_dir("hellaswag"), "validation")}


def test_hellaswag_real_rows(hellaswag):
    assert len(hellaswag) == 200
    pole = hellaswag["20022"]
    assert pole.gold == "D"
    assert pole.passage == "Pole vault: Pole vault is a sport where you run with a pole and stop and swing your body. A few women"
    assert pole.options[3] == "are in the gym practicing to do this pole vault, trying to do their best."
    assert hellaswag["2533"].gold == "C" and hellaswag["23408"].gold == "A"


def test_hellaswag_wikihow_markup_is_cleaned(hellaswag):
    bowl = hellaswag["670"]
    assert bowl.gold == "C"
    assert bowl.passage.startswith("Sports and Fitness: How to bowl the leg spinner's variations. To bowl a googly,")
    assert "[" not in bowl.passage and not any("[" in o for o in bowl.options)
    assert bowl.options[2].startswith("If done properly, the ball should turn from off to leg")


def test_hellaswag_official_first_rows_and_unlabelled_test():
    dummy = data_dir("hellaswag") / "hf_datasets_dummy"
    val = load_task("hellaswag", dummy / "hellaswag_val.jsonl")
    assert [(e.id, e.gold) for e in val] == [("24", "D"), ("92", "D")]
    assert val[0].passage == "Roof shingle removal: A man is sitting on a roof. He"
    assert val[0].options[3] == "starts pulling up roofing on a roof."
    result = get_task("hellaswag").read_local(dummy / "hellaswag_test.jsonl")
    assert result.examples == [] and result.skipped == {"missing field": 2}


def test_hellaswag_hub_row_has_string_label():
    row = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
           "ctx": "A man is sitting on a roof. he", "endings": ["a", "b", "c", "d"], "label": "3", "source_id": "x", "split": "val"}
    example = get_task("hellaswag").from_hf_row(row, 0)
    assert (example.id, example.gold) == ("24", "D")
    assert get_task("hellaswag").read_hf_rows([{**row, "label": ""}]).skipped == {"gold not among options": 1}


@pytest.fixture(scope="module")
def headqa():
    return get_task("headqa").read_local(data_dir("headqa"), "validation")


def test_headqa_real_rows(headqa):
    rows = {e.id: e for e in headqa.examples}
    assert len(rows) == 1366 - 30 and headqa.skipped == {"needs image": 30}
    nernst = rows["Cuaderno_2015_1_B-1"]
    assert nernst.question.startswith("The equilibrium potential for a permeant ion through a membrane")
    assert nernst.gold == "D" and nernst.options[3] == "The Nernst equation."
    assert rows["Cuaderno_2015_1_B-2"].gold == "A" and rows["Cuaderno_2015_1_B-2"].options[0] == "Sodium decreases."
    assert rows["Cuaderno_2015_1_Q-1"].gold == "D" and rows["Cuaderno_2015_1_Q-2"].gold == "B"
    assert "Cuaderno_2015_1_M-1" not in rows  # "Question linked to image # 1"


def test_headqa_hub_rows_order_options_by_aid():
    task = get_task("headqa")
    row = {"name": "Cuaderno_2015_1_B", "year": "2015", "category": "biology", "qid": 1, "qtext": "Q?", "ra": 2, "image": None,
           "answers": [{"aid": 3, "atext": "c"}, {"aid": 1, "atext": "a"}, {"aid": 2, "atext": "b"}, {"aid": 4, "atext": "d"}]}
    example = task.from_hf_row(row, 0)
    assert (example.id, example.options, example.gold) == ("Cuaderno_2015_1_B-1", ("a", "b", "c", "d"), "B")
    result = task.read_hf_rows([
        {**row, "image": {"bytes": b"png", "path": None}},
        {**row, "image": {"bytes": None, "path": None}, "qid": 2},  # raw parquet, no image
        {**row, "answers": row["answers"][:3] + [{"aid": 7, "atext": "g"}], "qid": 3},
        {**row, "ra": 9, "qid": 4},
    ])
    assert [e.id for e in result.examples] == ["Cuaderno_2015_1_B-2"]
    assert result.skipped == {"needs image": 1, "unexpected option labels": 1, "gold not among options": 1}


def test_headqa_release_layout(tmp_path):
    (tmp_path / "HEAD_EN").mkdir()
    exam = {"name": "E", "category": "c", "year": "2016", "data": [
        {"qid": "1", "qtext": "Q?", "ra": "1", "answers": [{"aid": i, "atext": t} for i, t in enumerate("abcde", 1)], "image": ""}]}
    (tmp_path / "HEAD_EN" / "test_HEAD_EN.json").write_text(json.dumps({"version": "1.0", "exams": {"E": exam}}))
    [example] = load_task("headqa", tmp_path)  # default split: test
    assert example.options == ("a", "b", "c", "d", "e") and example.gold == "A"


def test_cosmosqa_csv_saved_with_a_byte_order_mark(tmp_path):
    header = "id,context,question,answer0,answer1,answer2,answer3,label\r\n"
    (tmp_path / "valid.csv").write_bytes(("\ufeff" + header + 'c1,"Ctx, with comma.",Why?,a,b,c,d,2\r\n').encode("utf-8"))
    [example] = load_task("cosmosqa", tmp_path, "validation")
    assert (example.id, example.passage, example.gold) == ("c1", "Ctx, with comma.", "C")
