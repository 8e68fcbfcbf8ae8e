"""RACE: English exam reading comprehension (middle + high school), four options.

Release (RACE.tar.gz): RACE/{train,dev,test}/{high,middle}/<n>.txt, each one JSON object
  {"id": "high73.txt", "article", "questions": [...], "options": [[4], ...], "answers": ["C", ...]}.
  One Example per question; "_" marks the blank of cloze questions and is kept.
Hub: ehovy/race (configs all/high/middle), one row per question:
  {"example_id", "article", "question", "options": [4], "answer": "A".."D"}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from disrouter_jax.tasks import readers
from disrouter_jax.tasks.base import Task, choice_example
from disrouter_jax.tasks.example import BadRow, Example

_LETTERS = "ABCD"


def read_file(path: Path) -> Iterator[tuple[str, Any]]:
    """One record per question of a passage file; a malformed file is one bad row."""
    try:
        passage = readers.read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        yield path.name, BadRow("invalid JSON", str(err))
        return
    # "dev/high/73" identifies the passage across splits (the file's own "id" repeats across splits).
    passage_id = "/".join((path.parent.parent.name, path.parent.name, path.stem))
    questions = passage.get("questions") if isinstance(passage, dict) else None
    if not isinstance(questions, list) or not questions:
        yield path.name, BadRow("missing field", f"{path.name}: 'questions'")
        return
    options, answers = passage.get("options") or [], passage.get("answers") or []
    for q, question in enumerate(questions):
        yield f"{path.name}#{q}", {
            "id": f"{passage_id}-{q}",
            "article": passage.get("article"),
            "question": question,
            "options": options[q] if q < len(options) else None,
            "answer": answers[q] if q < len(answers) else None,
        }


def _example(record: Mapping[str, Any], id: str, where: str, task: str) -> Example:
    answer = readers.text_field(record, "answer", where)
    if answer not in _LETTERS:
        raise BadRow("gold not among options", f"{where}: answer {answer!r} is not one of A-D")
    return choice_example(
        task=task, id=id, question=readers.text_field(record, "question", where),
        options=readers.field(record, "options", where), gold_index=_LETTERS.index(answer), where=where,
        passage=readers.text_field(record, "article", where), num_options=(4, 4),
    )


def parse_record(record: Any, where: str, task: str) -> Example:
    return _example(record, record["id"], where, task)


def parse_hub_row(row: Mapping[str, Any], index: int, task: str) -> Example:
    where = f"row {index}"
    return _example(row, f"{readers.text_field(row, 'example_id', where)}-{index}", where, task)


TASK = Task(
    name="race",
    domain="in",
    answer_type="choice",
    read_file=read_file,
    parse_record=parse_record,
    parse_hub_row=parse_hub_row,
    split_patterns={
        split: tuple(f"{root}{d}/{level}/*.txt" for root in ("", "RACE/") for level in ("high", "middle"))
        for split, d in {"train": "train", "validation": "dev", "test": "test"}.items()
    },
    default_split="test",
    hf_id="ehovy/race",
    hf_configs=("all",),
)
