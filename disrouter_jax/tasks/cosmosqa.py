"""Cosmos QA: commonsense reading comprehension over everyday narratives, four options.

Release (wilburOne/cosmosqa data/): {train,valid}.csv with header
  id,context,question,answer0,answer1,answer2,answer3,label (label "0".."3").
  (The release test split is unlabelled and not supported.)
Hub: allenai/cosmos_qa, same fields with an int label (-1 in the unlabelled test split).
"""

from __future__ import annotations

from typing import Any, Mapping

from disrouter_jax.tasks import readers
from disrouter_jax.tasks.base import Task, choice_example
from disrouter_jax.tasks.example import BadRow, Example


def read_file(path):
    return readers.read_csv(path, header=True)


def _label_index(value: Any, where: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise BadRow("gold not among options", f"{where}: label {value!r}") from None


def _example(record: Mapping[str, Any], where: str, task: str) -> Example:
    return choice_example(
        task=task, id=readers.text_field(record, "id", where),
        question=readers.text_field(record, "question", where),
        options=[record.get(f"answer{i}") for i in range(4)],
        gold_index=_label_index(readers.field(record, "label", where), where), where=where,
        passage=readers.text_field(record, "context", where), num_options=(4, 4),
    )


def parse_record(record: Any, where: str, task: str) -> Example:
    return _example(record, where, task)


def parse_hub_row(row: Mapping[str, Any], index: int, task: str) -> Example:
    return _example(row, f"row {index}", task)


TASK = Task(
    name="cosmosqa",
    domain="in",
    answer_type="choice",
    read_file=read_file,
    parse_record=parse_record,
    parse_hub_row=parse_hub_row,
    split_patterns={
        split: (f"{token}*.csv", f"data/{token}*.csv") for split, token in {"train": "train", "validation": "valid"}.items()
    },
    default_split="validation",
    hf_id="allenai/cosmos_qa",
)
