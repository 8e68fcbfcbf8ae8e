"""The toy query families as ordinary registered tasks: files, prompts, checking."""

import pytest

from disrouter_jax.tasks import REFUSAL, get_task, load_task, scenario_instruction
from disrouter_jax.toy.tasks import (
    TASK_OF_FAMILY, TOY_KNOWLEDGE, TOY_SKILL, ToyTask, query_to_example, task_for_family, world_examples,
    write_task_files)
from disrouter_jax.toy.world import FAMILIES, HELDOUT, KNOWLEDGE, SKILL, TRAIN, ToyWorld, WorldConfig, checker


@pytest.fixture(scope="module")
def world():
    return ToyWorld(WorldConfig.reduced())


def test_toy_tasks_are_registered_like_any_task():
    assert isinstance(get_task(TOY_KNOWLEDGE), ToyTask)
    assert isinstance(get_task(TOY_SKILL), ToyTask)
    assert {TASK_OF_FAMILY[f] for f in FAMILIES} == {TOY_KNOWLEDGE, TOY_SKILL}
    with pytest.raises(ValueError, match="family"):
        task_for_family("poetry")


def test_task_files_round_trip_both_splits(world, tmp_path):
    write_task_files(world, tmp_path)
    for world_split, task_split in ((TRAIN, "train"), (HELDOUT, "test")):
        for task_name, examples in world_examples(world, world_split).items():
            loaded = load_task(task_name, path=tmp_path / task_name, split=task_split)
            assert loaded == examples
    default = load_task(TOY_SKILL, path=tmp_path / TOY_SKILL)
    assert [e.id for e in default] == [q.id for q in world.queries_for(HELDOUT, SKILL)]
    assert all(world.query(e.id).answer in (e.gold if isinstance(e.gold, tuple) else (e.gold,)) for e in default)


def test_prompt_is_the_bare_question_without_format_instruction(world):
    query = world.queries_for(HELDOUT, SKILL)[0]
    task = task_for_family(SKILL)
    example = query_to_example(query)
    assert task.messages(example, alpha=None) == [{"role": "user", "content": query.question}]
    scenario = task.messages(example, alpha=0.5)
    assert scenario[0] == {"role": "system", "content": scenario_instruction(0.5)}
    assert scenario[1] == {"role": "user", "content": query.question}


def test_checker_agrees_with_the_world_checker(world):
    for query in world.queries:
        task = task_for_family(query.family)
        example = query_to_example(query)
        wrong = "Nobody" if query.family == KNOWLEDGE else str(-int(query.answer) - 1)
        for response in (query.answer, f" {query.answer.upper()}.", wrong, query.answer + " 1"):
            assert task.check(example, response).correct == checker(query, response), (query, response)


def test_checker_is_exact_not_lenient(world):
    query = next(q for q in world.queries_for(HELDOUT, SKILL) if not q.answer.startswith("-"))
    example = query_to_example(query)
    task = task_for_family(SKILL)
    assert task.check(example, query.answer).correct
    assert not task.check(example, f"{query.question} = {query.answer}").correct
    assert not task.check(example, "-" + query.answer).correct or query.answer == "0"


def test_refusal_is_recognised(world):
    example = query_to_example(world.queries_for(HELDOUT, KNOWLEDGE)[0])
    verdict = task_for_family(KNOWLEDGE).check(example, REFUSAL)
    assert verdict.refused and not verdict.correct
