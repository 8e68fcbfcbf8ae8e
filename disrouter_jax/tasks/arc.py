"""AI2 ARC (Challenge, Easy, and both together) and OpenBookQA: science multiple choice.

Release JSONL (ARC-V1-Feb2018, OpenBookQA-V1-Sep2018 Data/Main):
  {"id", "question": {"stem", "choices": [{"text", "label"}, ...]}, "answerKey"}
  Labels are "A".."E" or "1".."4"; 3 to 5 choices. Options are lettered A.. by position and the
  gold is the position of answerKey among the row's own labels.
Hub: allenai/ai2_arc (configs "ARC-Challenge", "ARC-Easy"):
  {"id", "question", "choices": {"text": [..], "label": [..]}, "answerKey"};
  allenai/openbookqa (config "main"): same but the question is in "question_stem".
"""

from __future__ import annotations

from typing import Any, Mapping

from disrouter_jax.tasks import readers
from disrouter_jax.tasks.base import Task, choice_example, index_of_label
from disrouter_jax.tasks.example import BadRow, Example

_NUM_OPTIONS = (3, 5)


def _build(*, task: str, id: str, question: str, texts: Any, labels: Any, answer_key: Any, where: str) -> Example:
    if not isinstance(texts, (list, tuple)) or not isinstance(labels, (list, tuple)) or len(texts) != len(labels):
        raise BadRow("wrong option count", f"{where}: choice texts and labels differ in length")
    gold_index = index_of_label(labels, answer_key, where)
    return choice_example(
        task=task, id=id, question=question, options=texts, gold_index=gold_index, where=where,
        num_options=_NUM_OPTIONS,
    )


def parse_record(record: Any, where: str, task: str) -> Example:
    """Original release row (ARC and OpenBookQA share it)."""
    question = readers.field(record, "question", where)
    choices = readers.field(question, "choices", where)
    if not isinstance(choices, list) or not all(isinstance(c, Mapping) for c in choices):
        raise BadRow("wrong field type", f"{where}: 'question.choices' is not a list of objects")
    return _build(
        task=task,
        id=readers.text_field(record, "id", where),
        question=readers.text_field(question, "stem", where),
        texts=[c.get("text") for c in choices],
        labels=[c.get("label") for c in choices],
        answer_key=readers.text_field(record, "answerKey", where),
        where=where,
    )


def _parse_hub(row: Mapping[str, Any], index: int, task: str, question_field: str) -> Example:
    where = f"row {index}"
    choices = readers.field(row, "choices", where)
    if not isinstance(choices, Mapping):
        raise BadRow("wrong field type", f"{where}: 'choices' is not a mapping")
    return _build(
        task=task,
        id=readers.text_field(row, "id", where),
        question=readers.text_field(row, question_field, where),
        texts=choices.get("text"),
        labels=choices.get("label"),
        answer_key=readers.text_field(row, "answerKey", where),
        where=where,
    )


def parse_arc_hub_row(row: Mapping[str, Any], index: int, task: str) -> Example:
    return _parse_hub(row, index, task, "question")


def parse_openbookqa_hub_row(row: Mapping[str, Any], index: int, task: str) -> Example:
    return _parse_hub(row, index, task, "question_stem")


_ARC_SPLIT_FILES = {"train": "Train", "validation": "Dev", "test": "Test"}


def _arc_patterns(subsets: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """ARC-<Subset>-<Split>.jsonl, flat or in the release's ARC-<Subset>/ folders."""
    return {
        split: tuple(
            pattern
            for subset in subsets
            for pattern in (f"ARC-{subset}-{token}*.jsonl", f"ARC-{subset}/ARC-{subset}-{token}*.jsonl")
        )
        for split, token in _ARC_SPLIT_FILES.items()
    }


def _arc_task(name: str, subsets: tuple[str, ...]) -> Task:
    return Task(
        name=name,
        domain="in",
        answer_type="choice",
        read_file=readers.read_jsonl,
        parse_record=parse_record,
        parse_hub_row=parse_arc_hub_row,
        split_patterns=_arc_patterns(subsets),
        default_split="test",
        hf_id="allenai/ai2_arc",
        hf_configs=tuple(f"ARC-{s}" for s in subsets),
    )


ARC = _arc_task("arc", ("Challenge", "Easy"))
ARC_CHALLENGE = _arc_task("arc_challenge", ("Challenge",))
ARC_EASY = _arc_task("arc_easy", ("Easy",))

OPENBOOKQA = Task(
    name="openbookqa",
    domain="in",
    answer_type="choice",
    read_file=readers.read_jsonl,
    parse_record=parse_record,
    parse_hub_row=parse_openbookqa_hub_row,
    split_patterns={
        split: (f"{token}.jsonl", f"Main/{token}.jsonl", f"Data/Main/{token}.jsonl")
        for split, token in {"train": "train", "validation": "dev", "test": "test"}.items()
    },
    default_split="test",
    hf_id="allenai/openbookqa",
    hf_configs=("main",),
)
