"""MMLU (Hendrycks et al.): 57 subjects, four options.

Release (data.tar): data/{dev,val,test}/<subject>_<split>.csv, headerless, columns
  question, A, B, C, D, answer-letter. Fields may hold quoted multi-line passages.
Hub: cais/mmlu, config "all": {"question", "subject", "choices": [4], "answer": int 0-3};
  splits test / validation / dev / auxiliary_train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from disrouter_jax.tasks import readers
from disrouter_jax.tasks.base import Task, choice_example
from disrouter_jax.tasks.example import BadRow, Example

_LETTERS = "ABCD"


def read_file(path: Path) -> Iterator[tuple[str, Any]]:
    """CSV rows tagged with the file stem ("abstract_algebra_test") and their 0-based row index."""
    for index, (where, row) in enumerate(readers.read_csv(path, columns=6)):
        yield where, row if isinstance(row, BadRow) else {"stem": path.stem, "index": index, "row": row}


def parse_record(record: Any, where: str, task: str) -> Example:
    question, *options, answer = record["row"]
    answer = answer.strip()
    if answer not in _LETTERS:
        raise BadRow("gold not among options", f"{where}: answer {answer!r} is not one of A-D")
    question = readers.clean_text(question)
    if not question:
        raise BadRow("empty field", f"{where}: question")
    return choice_example(
        task=task, id=f"{record['stem']}-{record['index']}", question=question, options=options,
        gold_index=_LETTERS.index(answer), where=where, num_options=(4, 4),
    )


def parse_hub_row(row: Mapping[str, Any], index: int, task: str) -> Example:
    where = f"row {index}"
    subject = row.get("subject") or "mmlu"
    return choice_example(
        task=task, id=f"{subject}-{index}", question=readers.text_field(row, "question", where),
        options=readers.field(row, "choices", where), gold_index=readers.field(row, "answer", where),
        where=where, num_options=(4, 4),
    )


_SPLIT_DIRS = {"test": "test", "validation": "val", "dev": "dev", "auxiliary_train": "auxiliary_train"}

TASK = Task(
    name="mmlu",
    domain="in",
    answer_type="choice",
    read_file=read_file,
    parse_record=parse_record,
    parse_hub_row=parse_hub_row,
    split_patterns={
        split: (f"{d}/*.csv", f"data/{d}/*.csv") for split, d in {**_SPLIT_DIRS, "train": "auxiliary_train"}.items()
    },
    default_split="test",
    hf_id="cais/mmlu",
    hf_configs=("all",),
)
