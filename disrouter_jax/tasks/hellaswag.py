"""HellaSwag: pick the most plausible continuation of a short text, four endings (out of domain).

Release (rowanz/hellaswag data/): hellaswag_{train,val}.jsonl, {"ind", "activity_label", "ctx_a",
  "ctx_b", "ctx", "endings": [4], "label": int, "source_id", "split", "split_type"}.
  (The release test split is unlabelled and not supported.)
Hub: Rowan/hellaswag, same fields, label as a string ("" in test).
Text is cleaned much as in the common evaluation harness: WikiHow "[title]" markers become
sentence breaks and other [bracket] markers ("[header]", "[step]", "[substeps]") are dropped.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from disrouter_jax.tasks import readers
from disrouter_jax.tasks.base import Task, choice_example
from disrouter_jax.tasks.example import BadRow, Example

QUESTION_PREFIX = "Which ending is the most plausible continuation of this text?"
_TITLE_RE = re.compile(r"\s*\[title\]\s*")
_BRACKETED_RE = re.compile(r"\[.*?\]")
_DOUBLE_PERIOD_RE = re.compile(r"([.!?])\s*\.")


def clean(text: str) -> str:
    """WikiHow markup -> plain text: "[title]" is a sentence break, other [markers] vanish."""
    text = _TITLE_RE.sub(". ", readers.clean_text(text))
    text = _BRACKETED_RE.sub(" ", text)
    text = _DOUBLE_PERIOD_RE.sub(r"\1", text)
    return " ".join(text.split()).lstrip(". ").strip()


def _context(record: Mapping[str, Any], where: str) -> str:
    ctx_a, ctx_b = record.get("ctx_a"), record.get("ctx_b")
    if isinstance(ctx_a, str) and isinstance(ctx_b, str) and (ctx_a.strip() or ctx_b.strip()):
        return f"{ctx_a.strip()} {ctx_b.strip().capitalize()}".strip()
    return readers.text_field(record, "ctx", where)


def _example(record: Mapping[str, Any], where: str, task: str) -> Example:
    label = readers.field(record, "label", where)
    try:
        gold_index = int(str(label).strip())
    except ValueError:
        raise BadRow("gold not among options", f"{where}: label {label!r}") from None
    endings = readers.field(record, "endings", where)
    if isinstance(endings, (list, tuple)):
        endings = [clean(e) if isinstance(e, str) else e for e in endings]
    activity = str(record.get("activity_label") or "").strip()
    context = clean(_context(record, where))
    return choice_example(
        task=task, id=str(readers.field(record, "ind", where)), question=QUESTION_PREFIX,
        passage=f"{activity}: {context}" if activity else context,
        options=endings, gold_index=gold_index, where=where, num_options=(4, 4),
    )


def parse_record(record: Any, where: str, task: str) -> Example:
    return _example(record, where, task)


def parse_hub_row(row: Mapping[str, Any], index: int, task: str) -> Example:
    return _example(row, f"row {index}", task)


TASK = Task(
    name="hellaswag",
    domain="out",
    answer_type="choice",
    read_file=readers.read_jsonl,
    parse_record=parse_record,
    parse_hub_row=parse_hub_row,
    split_patterns={
        split: (f"hellaswag_{token}*.jsonl", f"data/hellaswag_{token}*.jsonl")
        for split, token in {"train": "train", "validation": "val"}.items()
    },
    default_split="validation",
    hf_id="Rowan/hellaswag",
)
