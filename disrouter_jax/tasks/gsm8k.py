"""GSM8K: grade-school math word problems; gold is the number after "####" in the solution.

Release: openai/grade-school-math data/{train,test}.jsonl, {"question", "answer"}.
Hub: openai/gsm8k, config "main", same two fields.
"""

from __future__ import annotations

from typing import Any, Mapping

from disrouter_jax.tasks import readers
from disrouter_jax.tasks.base import Task
from disrouter_jax.tasks.checkers import canonical_number, parse_number
from disrouter_jax.tasks.example import BadRow, Example


def gold_from_solution(solution: str, where: str = "") -> str:
    """Canonical final number of a GSM8K solution ("... #### 1,600" -> "1600")."""
    if "####" not in solution:
        raise BadRow("no final answer", f"{where}: solution has no '####'")
    value = parse_number(solution.rsplit("####", 1)[1])
    if value is None:
        raise BadRow("non-numeric answer", f"{where}: {solution.rsplit('####', 1)[1].strip()!r}")
    return canonical_number(value)


def _example(record: Mapping[str, Any], id: str, where: str, task: str) -> Example:
    question = readers.text_field(record, "question", where)
    gold = gold_from_solution(readers.text_field(record, "answer", where), where)
    return Example(task=task, id=id, question=question, gold=gold, answer_type="number")


def parse_record(record: Any, where: str, task: str) -> Example:
    # The release has no ids: "<file stem>-<0-based line index>" ("test-0" is the first test row).
    stem, lineno = where.rsplit(":", 1)
    return _example(record, f"{stem.split('.')[0]}-{int(lineno) - 1}", where, task)


def parse_hub_row(row: Mapping[str, Any], index: int, task: str) -> Example:
    return _example(row, f"hub-{index}", f"row {index}", task)


TASK = Task(
    name="gsm8k",
    domain="in",
    answer_type="number",
    read_file=readers.read_jsonl,
    parse_record=parse_record,
    parse_hub_row=parse_hub_row,
    split_patterns={"train": ("train.jsonl",), "test": ("test.jsonl",)},
    default_split="test",
    hf_id="openai/gsm8k",
    hf_configs=("main",),
)
