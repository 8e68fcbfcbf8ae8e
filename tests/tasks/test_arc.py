"""ARC (Challenge, Easy, both) and OpenBookQA: real release rows, Hub rows, option letters."""

from __future__ import annotations

import json

import pytest

from disrouter_jax.tasks import get_task, load_task

from .conftest import data_dir


@pytest.fixture(scope="module")
def arc_dev():
    return {e.id: e for e in load_task("arc", data_dir("arc"), "validation")}


def test_real_dev_files_load_completely(arc_dev):
    assert len(arc_dev) == 299 + 570
    assert len(load_task("arc_challenge", data_dir("arc"), "validation")) == 299
    easy = load_task("arc_easy", data_dir("arc"), "validation")
    assert len(easy) == 570 and {e.task for e in easy} == {"arc_easy"}


@pytest.mark.parametrize(
    "example_id,gold,options",
    [
        ("Mercury_SC_407695", "D", ("Put the objects in groups.", "Change the height of the ramp.",
                                    "Choose different objects to roll.", "Record the details of the investigation.")),
        ("Mercury_7103565", "C", ("fog", "rain", "drought", "tornado")),
        # labels "1".."4" in the file: lettered A-D by position, answerKey "2" -> B
        ("NYSEDREGENTS_2014_8_20", "B", ("greater than the total mass of the products", "equal to the total mass of the products",
                                         "equal to the mass of AgCl", "less than the mass of AgCl")),
        ("NYSEDREGENTS_2014_8_10", "A", ("obtain energy", "escape predators", "produce offspring", "excrete waste")),
        # three and five options
        ("NYSEDREGENTS_2014_4_4", "A", ("gas", "liquid", "solid")),
        ("TIMSS_2003_8_pg29", "E", ("liver", "kidney", "stomach", "bladder", "heart")),
        ("MCAS_2000_4_6", "A", ("cellular telephone", "television", "refrigerator", "airplane")),
    ],
)
def test_real_gold_answers_and_option_order(arc_dev, example_id, gold, options):
    example = arc_dev[example_id]
    assert example.gold == gold and example.options == options


def test_stray_control_characters_are_removed(arc_dev):
    question = arc_dev["NYSEDREGENTS_2014_8_20"].question
    assert "AgNO3 + NaCl (Reactants)" in question and "\x02" not in question


def test_answer_to_a_five_option_row():
    task = get_task("arc")
    example = {e.id: e for e in load_task("arc", data_dir("arc"), "validation")}["TIMSS_2003_8_pg29"]
    assert task.check(example, "Answer: E").correct
    assert task.check(example, "heart").correct
    assert not task.check(example, "The answer is (D) bladder").correct


def test_openbookqa_real_rows():
    rows = {e.id: e for e in load_task("openbookqa", data_dir("openbookqa"), "test")}
    assert len(rows) == 500
    assert rows["8-343"].gold == "B" and rows["8-343"].options[1] == "quit eating lunch out"
    assert rows["7-7"].gold == "C" and rows["7-7"].options == ("cold", "water", "heat", "humidity")


def test_hub_rows():
    arc_row = {"id": "x1", "question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["1", "2", "3"]}, "answerKey": "2"}
    example = get_task("arc").from_hf_row(arc_row, 0)
    assert (example.id, example.options, example.gold) == ("x1", ("ice", "steam", "rock"), "B")
    obqa_row = {"id": "7-7", "question_stem": "Some animals use a liquid coming from their skin to adjust to",
                "choices": {"text": ["cold", "water", "heat", "humidity"], "label": ["A", "B", "C", "D"]}, "answerKey": "C"}
    example = get_task("openbookqa").from_hf_row(obqa_row, 0)
    assert example.question.startswith("Some animals") and example.gold == "C"


def _row(id, labels, key, texts=None):
    texts = texts or [f"option {label}" for label in labels]
    return json.dumps({"id": id, "question": {"stem": f"stem {id}", "choices": [{"text": t, "label": l} for t, l in zip(texts, labels)]}, "answerKey": key})


def test_bad_rows_never_shift_letters(tmp_path):
    lines = [
        _row("ok1", "ABCD", "C"),
        _row("gap", "ABD", "D"),  # labels with a gap: not guessed
        _row("nokey", "ABCD", "E"),  # answer not among labels
        _row("two", "AB", "A"),  # too few options for ARC
        _row("empty", "ABCD", "A", texts=["x", "", "y", "z"]),
        json.dumps({"id": "nochoices", "question": {"stem": "s"}, "answerKey": "A"}),
        _row("ok2", "1234", "4"),
    ]
    path = tmp_path / "ARC-Challenge-Test.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = get_task("arc_challenge").read_local(tmp_path, "test")
    assert [(e.id, e.gold, e.options[ord(e.gold) - 65]) for e in result.examples] == [("ok1", "C", "option C"), ("ok2", "D", "option 4")]
    assert result.skipped == {"unexpected option labels": 1, "gold not among options": 1, "wrong option count": 1,
                              "empty option": 1, "missing field": 1}


def test_release_layout_with_subset_folders(tmp_path):
    for subset, key in (("Challenge", "A"), ("Easy", "B")):
        (tmp_path / f"ARC-{subset}").mkdir()
        (tmp_path / f"ARC-{subset}" / f"ARC-{subset}-Test.jsonl").write_text(_row(subset, "ABCD", key) + "\n")
    assert [e.id for e in load_task("arc", tmp_path, "test")] == ["Challenge", "Easy"]
    assert [e.id for e in load_task("arc_easy", tmp_path, "test")] == ["Easy"]
