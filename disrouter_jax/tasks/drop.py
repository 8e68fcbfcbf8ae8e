"""DROP: discrete reasoning over paragraphs (numbers, dates, spans).

Release (drop_dataset.zip): drop_dataset_{train,dev}.json, one object
  {passage_id: {"passage", "qa_pairs": [{"question", "query_id", "answer": {"number", "date":
  {"day","month","year"}, "spans": [...]}, "validated_answers": [same shape, ...]}], "wiki_url"}}.
  Gold alternatives, as in the official evaluation: "answer" plus every validated answer, each
  written as its number, its date ("day month year", empty parts dropped) or its spans joined by ", ".
Hub: ucinlp/drop {"section_id", "query_id", "passage", "question", "answers_spans": {"spans", "types"}}.
  The Hub flattens multi-span answers into one list, so each listed span is taken as an alternative.
Checked by span F1 with the DROP number rules (canonical numbers; a gold number must appear).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from disrouter_jax.tasks import readers
from disrouter_jax.tasks.base import Task
from disrouter_jax.tasks.example import BadRow, DataFileError, Example

FORMAT_INSTRUCTION = (
    "Think briefly if needed, then give the final answer on the last line in the form "
    '"Answer: <answer>", where <answer> is a number, a date, or a short span from the passage.'
)


def answer_string(answer: Any) -> str:
    """One DROP answer object as text ("" when it is empty)."""
    if not isinstance(answer, Mapping):
        return ""
    number = str(answer.get("number") or "").strip()
    if number:
        return number
    date = answer.get("date") or {}
    if isinstance(date, Mapping):
        date_text = " ".join(str(date.get(k) or "").strip() for k in ("day", "month", "year")).split()
        if date_text:
            return " ".join(date_text)
    spans = [str(s).strip() for s in answer.get("spans") or [] if str(s).strip()]
    return ", ".join(spans)


def _unique(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))


def read_file(path: Path) -> Iterator[tuple[str, Any]]:
    data = readers.read_json(path)
    if not isinstance(data, dict):
        raise DataFileError(f"{path}: expected an object keyed by passage id, got {type(data).__name__}")
    for passage_id, section in data.items():
        qa_pairs = section.get("qa_pairs") if isinstance(section, dict) else None
        if not isinstance(qa_pairs, list):
            yield f"{path.name}:{passage_id}", BadRow("missing field", f"{path.name}:{passage_id}: 'qa_pairs'")
            continue
        for q, qa in enumerate(qa_pairs):
            where = f"{path.name}:{passage_id}#{q}"
            if not isinstance(qa, dict):
                yield where, BadRow("not an object", where)
                continue
            validated = qa.get("validated_answers") or []
            yield where, {
                "query_id": qa.get("query_id"),
                "passage": section.get("passage"),
                "question": qa.get("question"),
                "golds": _unique([answer_string(a) for a in [qa.get("answer"), *validated]]),
            }


def _example(record: Mapping[str, Any], golds: tuple[str, ...], where: str, task: str) -> Example:
    if not golds:
        raise BadRow("empty answer", where)
    return Example(
        task=task, id=readers.text_field(record, "query_id", where),
        question=readers.text_field(record, "question", where),
        passage=readers.text_field(record, "passage", where), gold=golds, answer_type="span",
    )


def parse_record(record: Any, where: str, task: str) -> Example:
    return _example(record, record["golds"], where, task)


def parse_hub_row(row: Mapping[str, Any], index: int, task: str) -> Example:
    where = f"row {index}"
    answers = readers.field(row, "answers_spans", where)
    spans = answers.get("spans") if isinstance(answers, Mapping) else None
    return _example(row, _unique([str(s).strip() for s in spans or []]), where, task)


TASK = Task(
    name="drop",
    domain="in",
    answer_type="span",
    read_file=read_file,
    parse_record=parse_record,
    parse_hub_row=parse_hub_row,
    split_patterns={
        split: (f"drop_dataset_{token}*.json", f"drop_dataset/drop_dataset_{token}*.json")
        for split, token in {"train": "train", "validation": "dev"}.items()
    },
    default_split="validation",
    hf_id="ucinlp/drop",
    format_instruction=FORMAT_INSTRUCTION,
    span_numbers=True,
)
