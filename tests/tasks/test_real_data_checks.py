"""Every real sample row through its checker: the gold answer written the way a model would is
correct, another option is wrong, and a refusal is a refusal."""

from __future__ import annotations

import pytest

from disrouter_jax.tasks import get_task, load_task, normalize_answer

from .conftest import data_dir

CHOICE_SETS = [
    ("arc", "arc", "validation"),
    ("openbookqa", "openbookqa", "test"),
    ("mmlu", "mmlu", "test"),
    ("race", "race", "test"),
    ("cosmosqa", "cosmosqa", "validation"),
    ("hellaswag", "hellaswag", "validation"),
    ("headqa", "headqa", "validation"),
]


def _distinct_gold_text(example) -> bool:
    """The gold option's text can identify it: not empty, not inside another option's text."""
    gold = normalize_answer(example.options[example.gold_index])
    others = [normalize_answer(o) for i, o in enumerate(example.options) if i != example.gold_index]
    return bool(gold) and not any(gold in other for other in others)


@pytest.mark.parametrize("task_name,folder,split", CHOICE_SETS)
def test_choice_rows(task_name, folder, split):
    task = get_task(task_name)
    examples = load_task(task_name, data_dir(folder), split)
    for example in examples:
        wrong = "A" if example.gold != "A" else "B"
        assert task.check(example, f"Answer: {example.gold}").correct, example.id
        assert task.check(example, f"The answer is ({example.gold}).").correct, example.id
        assert not task.check(example, f"Answer: {wrong}").correct, example.id
        assert task.check(example, "I don't know!").refused, example.id
        if _distinct_gold_text(example):
            assert task.check(example, example.options[example.gold_index]).correct, example.id
    assert sum(_distinct_gold_text(e) for e in examples) >= 0.85 * len(examples)  # the text check ran


def test_gsm8k_rows():
    task = get_task("gsm8k")
    for example in load_task("gsm8k", data_dir("gsm8k"), "test"):
        assert task.check(example, f"Let me compute.\nThe answer is {int(example.gold):,}.").correct, example.id
        assert not task.check(example, f"The answer is {int(example.gold) + 1}.").correct, example.id


@pytest.mark.parametrize("task_name,split", [("squad", "validation"), ("drop", "validation")])
def test_span_rows(task_name, split):
    task = get_task(task_name)
    for example in load_task(task_name, data_dir(task_name), split):
        for gold in example.gold:
            assert task.check(example, f"Answer: {gold}").correct, example.id
        assert not task.check(example, "Answer: Xylophone quartet").correct, example.id
