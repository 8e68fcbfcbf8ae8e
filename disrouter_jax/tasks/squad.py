"""SQuAD v1.1: extractive question answering over Wikipedia paragraphs (out of domain).

Release: {train,dev}-v1.1.json = {"data": [{"title", "paragraphs": [{"context", "qas": [{"id",
  "question", "answers": [{"answer_start", "text"}, ...]}]}]}], "version": "1.1"}.
  Every listed answer text is a gold alternative (the official evaluation takes the max).
Hub: rajpurkar/squad (config "plain_text"):
  {"id", "title", "context", "question", "answers": {"text": [..], "answer_start": [..]}}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from disrouter_jax.tasks import readers
from disrouter_jax.tasks.base import Task
from disrouter_jax.tasks.example import BadRow, DataFileError, Example


def read_file(path: Path) -> Iterator[tuple[str, Any]]:
    data = readers.read_json(path)
    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list):
        raise DataFileError(f"{path}: expected {{'data': [...]}} (SQuAD v1.1 layout)")
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(article.get("paragraphs") or []):
            for q, qa in enumerate(paragraph.get("qas") or []):
                where = f"{path.name}:{a}.{p}.{q}"
                if not isinstance(qa, dict):
                    yield where, BadRow("not an object", where)
                    continue
                answers = qa.get("answers") or []
                yield where, {
                    "id": qa.get("id"),
                    "context": paragraph.get("context"),
                    "question": qa.get("question"),
                    "texts": [a.get("text") for a in answers if isinstance(a, dict)],
                }


def _example(record: Mapping[str, Any], texts: Any, where: str, task: str) -> Example:
    golds = tuple(dict.fromkeys(str(t).strip() for t in texts or [] if t is not None and str(t).strip()))
    if not golds:
        raise BadRow("empty answer", where)
    return Example(
        task=task, id=readers.text_field(record, "id", where), question=readers.text_field(record, "question", where),
        passage=readers.text_field(record, "context", where), gold=golds, answer_type="span",
    )


def parse_record(record: Any, where: str, task: str) -> Example:
    return _example(record, record["texts"], where, task)


def parse_hub_row(row: Mapping[str, Any], index: int, task: str) -> Example:
    where = f"row {index}"
    answers = readers.field(row, "answers", where)
    return _example(row, answers.get("text") if isinstance(answers, Mapping) else None, where, task)


TASK = Task(
    name="squad",
    domain="out",
    answer_type="span",
    read_file=read_file,
    parse_record=parse_record,
    parse_hub_row=parse_hub_row,
    split_patterns={"train": ("train-v1.1*.json",), "validation": ("dev-v1.1*.json",)},
    default_split="validation",
    hf_id="rajpurkar/squad",
    hf_configs=("plain_text",),
)
