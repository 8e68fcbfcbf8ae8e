"""HEAD-QA (English): Spanish healthcare specialisation exams, 4-5 options (out of domain).

Release (HEAD_EN.zip): {train,dev,test}_HEAD_EN.json = {"version", "language", "exams": {exam: {
  "name", "category", "year", "data": [{"qid": "1", "qtext", "ra": "4", "answers": [{"aid": 1,
  "atext"}, ...], "image": ""}]}}}. qid/ra are strings, aid an int.
Hub: dvilares/head_qa, config "en": {"name", "year", "category", "qid": int, "qtext", "ra": int,
  "image": Image, "answers": [{"aid", "atext"}]}.
Options are ordered by aid and must be numbered 1..n; the gold is the position of ra among them.
Questions that refer to an image are skipped (reason "needs image"): a text-only model cannot
answer them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from disrouter_jax.tasks import readers
from disrouter_jax.tasks.base import Task, choice_example
from disrouter_jax.tasks.example import BadRow, DataFileError, Example


def read_file(path: Path) -> Iterator[tuple[str, Any]]:
    data = readers.read_json(path)
    exams = data.get("exams") if isinstance(data, dict) else None
    if not isinstance(exams, dict):
        raise DataFileError(f"{path}: expected {{'exams': {{...}}}} (HEAD-QA layout)")
    for exam_key, exam in exams.items():
        questions = exam.get("data") if isinstance(exam, dict) else None
        if not isinstance(questions, list):
            yield f"{path.name}:{exam_key}", BadRow("missing field", f"{path.name}:{exam_key}: 'data'")
            continue
        for q, question in enumerate(questions):
            where = f"{path.name}:{exam_key}#{q}"
            if not isinstance(question, dict):
                yield where, BadRow("not an object", where)
                continue
            yield where, {**question, "name": exam.get("name") or exam_key}


def _has_image(value: Any) -> bool:
    # Release: a file name or ""; Hub: a decoded image, or {"bytes", "path"} in raw parquet, or None.
    if isinstance(value, Mapping):
        return bool(value.get("bytes") or value.get("path"))
    return value is not None and value != ""


def _example(record: Mapping[str, Any], where: str, task: str) -> Example:
    if _has_image(record.get("image")):
        raise BadRow("needs image", where)
    answers = readers.field(record, "answers", where)
    if not isinstance(answers, list) or not all(isinstance(a, Mapping) for a in answers):
        raise BadRow("wrong field type", f"{where}: 'answers' is not a list of objects")
    try:
        by_aid = sorted((int(a.get("aid")), a.get("atext")) for a in answers)
        right = int(readers.field(record, "ra", where))
    except (TypeError, ValueError):
        raise BadRow("wrong field type", f"{where}: non-integer aid or ra") from None
    aids = [aid for aid, _ in by_aid]
    if aids != list(range(1, len(aids) + 1)):
        raise BadRow("unexpected option labels", f"{where}: aids {aids}")
    qid = readers.text_field(record, "qid", where)
    return choice_example(
        task=task, id=f"{readers.text_field(record, 'name', where)}-{qid}",
        question=readers.text_field(record, "qtext", where), options=[text for _, text in by_aid],
        gold_index=right - 1 if 1 <= right <= len(aids) else -1, where=where, num_options=(4, 5),
    )


def parse_record(record: Any, where: str, task: str) -> Example:
    return _example(record, where, task)


def parse_hub_row(row: Mapping[str, Any], index: int, task: str) -> Example:
    return _example(row, f"row {index}", task)


TASK = Task(
    name="headqa",
    domain="out",
    answer_type="choice",
    read_file=read_file,
    parse_record=parse_record,
    parse_hub_row=parse_hub_row,
    split_patterns={
        split: (f"{token}_HEAD_EN*.json", f"HEAD_EN/{token}_HEAD_EN*.json")
        for split, token in {"train": "train", "validation": "dev", "test": "test"}.items()
    },
    default_split="test",
    hf_id="dvilares/head_qa",
    hf_configs=("en",),
)
