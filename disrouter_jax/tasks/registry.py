"""Registry of tasks by name: the paper's ten benchmarks, plus whatever others register.

The toy world (or a user) adds tasks with `register_task(Task(...))`, or with
`register_task(example_jsonl_task(...))` for data already written as Example JSONL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from disrouter_jax.tasks import arc, cosmosqa, drop, gsm8k, headqa, hellaswag, mmlu, race, readers, squad
from disrouter_jax.tasks.base import Domain, Task
from disrouter_jax.tasks.example import AnswerType, BadRow, Example

TASKS: dict[str, Task] = {}

# The paper's datasets (ARC counts once: Challenge and Easy together).
IN_DOMAIN: tuple[str, ...] = ("gsm8k", "arc", "mmlu", "race", "openbookqa", "drop", "cosmosqa")
OUT_OF_DOMAIN: tuple[str, ...] = ("squad", "hellaswag", "headqa")
PAPER_TASKS: tuple[str, ...] = IN_DOMAIN + OUT_OF_DOMAIN


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Add `task` under `task.name`; re-registering a different task under a taken name is an
    error unless replace=True (registering the identical object again is a no-op)."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task expects a Task, got {type(task).__name__}")
    existing = TASKS.get(task.name)
    if existing is not None and existing is not task and not replace:
        raise ValueError(f"task {task.name!r} is already registered; pass replace=True to override it")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; registered: {', '.join(sorted(TASKS))}") from None


def load_task(name: str, path: str | Path | None = None, split: str | None = None, **hf_kwargs: Any) -> list[Example]:
    """Examples of task `name`.

    path given: read local files (a single file, whatever its split, or a directory in the
    release layout, from which `split`'s files are taken; Hub parquet files work too).
    path None: `datasets.load_dataset` from the Hugging Face Hub (network or cache needed).
    split None: the task's default evaluation split (e.g. "test", or "validation" where the test
    split is unlabelled). Split names follow the Hub: "train", "validation", "test".
    """
    task = get_task(name)
    if path is not None:
        if hf_kwargs:
            raise TypeError(f"load_task({name!r}): {sorted(hf_kwargs)} only apply to Hub loading (path=None)")
        return task.load_local(path, split)
    return task.load_hf(split, **hf_kwargs)


# ------------------------------------------------------------------------ Example JSONL tasks


def read_examples_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    return readers.read_jsonl(Path(path))


def write_examples_jsonl(path: str | Path, examples: Iterable[Example]) -> int:
    """Write examples one JSON object per line (Example.to_dict); returns the count."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(example.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    return count


def _parse_example_dict(record: Any, where: str, task: str) -> Example:
    if not isinstance(record, dict):
        raise BadRow("not an object", where)
    example = Example.from_dict({**record, "task": record.get("task", task)})
    if example.task != task:
        raise BadRow("wrong task", f"{where}: row is for task {example.task!r}, not {task!r}")
    return example


def example_jsonl_task(
    name: str,
    *,
    domain: Domain,
    answer_type: AnswerType,
    format_instruction: str | None = None,
    f1_threshold: float = 0.5,
    span_numbers: bool = False,
    default_split: str = "test",
) -> Task:
    """A task whose local files are Example JSONL (`write_examples_jsonl`), e.g. a synthetic
    world's; a directory holds "<split>.jsonl" (or "<split>*.jsonl") per split."""
    return Task(
        name=name,
        domain=domain,
        answer_type=answer_type,
        read_file=read_examples_jsonl,
        parse_record=_parse_example_dict,
        parse_hub_row=lambda row, index, task: _parse_example_dict(dict(row), f"row {index}", task),
        split_patterns={s: (f"{s}.jsonl", f"{s}*.jsonl") for s in ("train", "validation", "test")},
        default_split=default_split,
        format_instruction=format_instruction,
        f1_threshold=f1_threshold,
        span_numbers=span_numbers,
    )


for _task in (
    gsm8k.TASK, arc.ARC, arc.ARC_CHALLENGE, arc.ARC_EASY, mmlu.TASK, race.TASK, arc.OPENBOOKQA,
    drop.TASK, cosmosqa.TASK, squad.TASK, hellaswag.TASK, headqa.TASK,
):
    register_task(_task)
