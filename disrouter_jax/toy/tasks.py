"""The toy world's query families as ordinary registered tasks: "toy_knowledge", "toy_choice"
and "toy_skill" (in-domain) and "toy_ood" (out-of-domain: only a test split, never trained on).

Nothing downstream needs to know they are toys: they load Example JSONL files like any local task
(`load_task("toy_skill", path=pool.task_dir / "toy_skill", split="test")`), prompt with the
project's `build_messages` (no answer-format instruction: toy agents answer bare, e.g. "sailor"
or "3") and check responses with the world's exact-match rule (`toy.world.checker`), after the
usual refusal test.

World splits map to task splits: world "train" -> "train", world "heldout" -> "test" (the tasks'
default split). Example ids are the world's query ids, so `world.query(example.id)` recovers the
hidden difficulty of any example.

Importing this module registers the tasks (idempotent).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from disrouter_jax.tasks import checkers
from disrouter_jax.tasks.base import Task
from disrouter_jax.tasks.example import Example, Verdict
from disrouter_jax.tasks.registry import example_jsonl_task, register_task
from disrouter_jax.toy.world import CHOICE, FAMILIES, HELDOUT, KNOWLEDGE, OOD, SKILL, TRAIN, ToyQuery, ToyWorld, normalize_answer

TOY_KNOWLEDGE = "toy_knowledge"
TOY_CHOICE = "toy_choice"
TOY_SKILL = "toy_skill"
TOY_OOD = "toy_ood"
TASK_OF_FAMILY = {KNOWLEDGE: TOY_KNOWLEDGE, CHOICE: TOY_CHOICE, SKILL: TOY_SKILL, OOD: TOY_OOD}
FAMILY_OF_TASK = {task: family for family, task in TASK_OF_FAMILY.items()}
IN_DOMAIN_TASKS = (TOY_KNOWLEDGE, TOY_CHOICE, TOY_SKILL)
OUT_OF_DOMAIN_TASKS = (TOY_OOD,)
TASK_SPLIT_OF_WORLD_SPLIT = {TRAIN: "train", HELDOUT: "test"}
_DOMAIN_OF_FAMILY = {KNOWLEDGE: "in", CHOICE: "in", SKILL: "in", OOD: "out"}


@dataclasses.dataclass(frozen=True)
class ToyTask(Task):
    """A Task whose checker is the toy world's: exact match after `toy.world.normalize_answer`.

    The benchmark checkers are deliberately lenient (last number in a derivation, token F1); toy
    agents answer bare, so an answer is right only if it *is* the answer ("-12" is not "12").
    """

    def question_text(self, example: Example) -> str:
        """What a toy agent is shown: the bare question (no "Question:" prefix, no options)."""
        return example.question

    def check(self, example: Example, response: str, *, f1_threshold: float | None = None) -> Verdict:
        if example.answer_type != self.answer_type:
            raise ValueError(f"{self.name}: example {example.key} has answer_type {example.answer_type!r}")
        if checkers.is_refusal(response):
            return Verdict(correct=False, refused=True, extracted=None)
        extracted = response.strip() or None
        golds = example.gold if isinstance(example.gold, tuple) else (example.gold,)
        correct = any(normalize_answer(response) == normalize_answer(gold) for gold in golds)
        return Verdict(correct=correct, refused=False, extracted=extracted, score=float(correct))


def _make_task(family: str) -> ToyTask:
    # Every toy answer is a short span (a value word, or letters), checked by exact match.
    base = example_jsonl_task(TASK_OF_FAMILY[family], domain=_DOMAIN_OF_FAMILY[family], answer_type="span",
                              format_instruction="", default_split="test")
    return ToyTask(**{field.name: getattr(base, field.name) for field in dataclasses.fields(Task)})


TOY_TASKS: dict[str, ToyTask] = {family: _make_task(family) for family in FAMILIES}
for _task in TOY_TASKS.values():
    register_task(_task)


def task_for_family(family: str) -> ToyTask:
    try:
        return TOY_TASKS[family]
    except KeyError:
        raise ValueError(f"family={family!r}: must be one of {tuple(TOY_TASKS)}") from None


def query_to_example(query: ToyQuery) -> Example:
    """The task Example of one world query (same id, gold = the query's answer)."""
    return Example(task=TASK_OF_FAMILY[query.family], id=query.id, question=query.question, gold=(query.answer,),
                   answer_type="span")


def world_examples(world: ToyWorld, split: str) -> dict[str, list[Example]]:
    """{task name: examples} of one world split ("train" or "heldout"); the out-of-domain family
    has held-out queries only."""
    return {TASK_OF_FAMILY[family]: [query_to_example(q) for q in world.queries_for(split, family)]
            for family in FAMILIES if world.queries_for(split, family)}


def write_task_files(world: ToyWorld, out_dir: str | os.PathLike) -> Path:
    """Write out_dir/<task>/<split>.jsonl for every toy task and split it has, atomically per file."""
    out_dir = Path(out_dir)
    for world_split, task_split in TASK_SPLIT_OF_WORLD_SPLIT.items():
        for task_name, examples in world_examples(world, world_split).items():
            path = out_dir / task_name / f"{task_split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for example in examples:
                    f.write(json.dumps(example.to_dict(), ensure_ascii=False) + "\n")
            os.replace(tmp, path)
    return out_dir
