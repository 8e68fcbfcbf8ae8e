"""The toy query families as ordinary registered tasks: one per family, files per split, bare-question
prompts, exact-match checking after the refusal test."""

import dataclasses
import json

import pytest

from disrouter_jax.tasks import REFUSAL, build_messages, get_task, load_task, scenario_instruction
from disrouter_jax.toy.tasks import (
    FAMILY_OF_TASK, IN_DOMAIN_TASKS, OUT_OF_DOMAIN_TASKS, TASK_OF_FAMILY, TASK_SPLIT_OF_WORLD_SPLIT, TOY_CHOICE,
    TOY_KNOWLEDGE, TOY_OOD, TOY_SKILL, ToyTask, query_to_example, task_for_family, world_examples,
    write_task_files)
from disrouter_jax.toy.world import (
    CHOICE, FAMILIES, HELDOUT, IN_DOMAIN_FAMILIES, KNOWLEDGE, OOD, SKILL, SPLITS, TRAIN, ToyWorld, WorldConfig,
    checker)


@pytest.fixture(scope="module")
def world():
    # With the two-option family on (off by default), so that every family's task is exercised.
    return ToyWorld(dataclasses.replace(WorldConfig.reduced(), choice_attributes=("job",)))


@pytest.fixture(scope="module")
def task_dir(world, tmp_path_factory):
    return write_task_files(world, tmp_path_factory.mktemp("toy_tasks"))


def _wrong_answer(query):
    # A well-formed wrong answer of the family: another count, or another value word.
    return str(int(query.answer) % 9 + 1) if query.family == SKILL else (
        "miner" if query.answer != "miner" else "sailor")


def test_one_registered_task_per_family():
    assert set(TASK_OF_FAMILY) == set(FAMILIES)
    assert sorted(TASK_OF_FAMILY.values()) == sorted([TOY_KNOWLEDGE, TOY_CHOICE, TOY_SKILL, TOY_OOD])
    assert {FAMILY_OF_TASK[TASK_OF_FAMILY[f]] for f in FAMILIES} == set(FAMILIES)
    for family in FAMILIES:
        task = get_task(TASK_OF_FAMILY[family])
        assert isinstance(task, ToyTask) and task is task_for_family(family)
        assert task.answer_type == "span" and task.default_split == "test"
    with pytest.raises(ValueError, match="family"):
        task_for_family("poetry")


def test_domains_match_the_world_families():
    assert IN_DOMAIN_TASKS == tuple(TASK_OF_FAMILY[f] for f in IN_DOMAIN_FAMILIES)
    assert OUT_OF_DOMAIN_TASKS == (TASK_OF_FAMILY[OOD],)
    assert all(get_task(name).domain == "in" for name in IN_DOMAIN_TASKS)
    assert get_task(TOY_OOD).domain == "out"


def test_query_to_example_keeps_id_question_and_gold(world):
    for query in world.queries:
        example = query_to_example(query)
        assert (example.task, example.id, example.question) == (TASK_OF_FAMILY[query.family], query.id,
                                                                query.question)
        assert example.gold == (query.answer,) and example.answer_type == "span"
        assert world.query(example.id) is query


def test_world_examples_cover_each_split_and_skip_empty_families(world):
    for split in SPLITS:
        examples = world_examples(world, split)
        expected_tasks = {TASK_OF_FAMILY[f] for f in FAMILIES if world.queries_for(split, f)}
        assert set(examples) == expected_tasks
        for name, rows in examples.items():
            assert [e.id for e in rows] == [q.id for q in world.queries_for(split, FAMILY_OF_TASK[name])]
    assert TOY_OOD not in world_examples(world, TRAIN)  # out-of-domain: test split only
    assert TOY_OOD in world_examples(world, HELDOUT)


def test_task_files_written_per_task_and_split(world, task_dir):
    assert TASK_SPLIT_OF_WORLD_SPLIT == {TRAIN: "train", HELDOUT: "test"}
    written = sorted(p.relative_to(task_dir).as_posix() for p in task_dir.rglob("*") if p.is_file())
    assert written == sorted([f"{name}/{split}.jsonl" for name in IN_DOMAIN_TASKS for split in ("train", "test")]
                             + [f"{TOY_OOD}/test.jsonl"])  # no stray .tmp files, no ood train file
    for world_split, task_split in TASK_SPLIT_OF_WORLD_SPLIT.items():
        for name, examples in world_examples(world, world_split).items():
            lines = (task_dir / name / f"{task_split}.jsonl").read_text(encoding="utf-8").splitlines()
            assert [json.loads(line)["id"] for line in lines] == [e.id for e in examples]


def test_task_files_load_back_for_both_splits(world, task_dir):
    for world_split, task_split in TASK_SPLIT_OF_WORLD_SPLIT.items():
        for name, examples in world_examples(world, world_split).items():
            assert load_task(name, path=task_dir / name, split=task_split) == examples
    for family in FAMILIES:
        # The default split is "test", i.e. the world's held-out queries.
        name = TASK_OF_FAMILY[family]
        default = load_task(name, path=task_dir / name)
        assert [e.id for e in default] == [q.id for q in world.queries_for(HELDOUT, family)]
        assert all(world.query(e.id).answer in e.gold for e in default)


def test_rewriting_task_files_replaces_them(world, tmp_path):
    write_task_files(ToyWorld(WorldConfig.reduced(seed=5)), tmp_path)
    write_task_files(world, tmp_path)
    loaded = load_task(TOY_KNOWLEDGE, path=tmp_path / TOY_KNOWLEDGE, split="train")
    assert loaded == world_examples(world, TRAIN)[TOY_KNOWLEDGE]


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_is_the_bare_question_without_format_instruction(world, family):
    query = world.queries_for(HELDOUT, family)[0]
    task = task_for_family(family)
    example = query_to_example(query)
    assert task.question_text(example) == query.question
    assert task.messages(example, alpha=None) == [{"role": "user", "content": query.question}]
    scenario = task.messages(example, alpha=0.5)
    assert scenario == [{"role": "system", "content": scenario_instruction(0.5)},
                        {"role": "user", "content": query.question}]
    assert scenario == build_messages(query.question, alpha=0.5, task_format_instruction="")


def test_checker_agrees_with_the_world_checker(world):
    for query in world.queries:
        task = task_for_family(query.family)
        example = query_to_example(query)
        for response in (query.answer, f" {query.answer.upper()}.", _wrong_answer(query), query.answer + " 1"):
            verdict = task.check(example, response)
            assert verdict.correct == checker(query, response), (query, response)
            assert not verdict.refused
        assert task.check(example, query.answer).correct
        assert not task.check(example, _wrong_answer(query)).correct


def test_checker_is_exact_not_lenient(world):
    skill = query_to_example(world.queries_for(HELDOUT, SKILL)[0])
    task = task_for_family(SKILL)
    answer = skill.gold[0]
    assert task.check(skill, answer).correct and task.check(skill, answer).score == 1.0
    assert not task.check(skill, f"The answer is {answer}").correct  # a lenient checker would take it
    assert not task.check(skill, "-" + answer).correct
    assert not task.check(skill, answer + answer).correct
    choice_query = world.queries_for(HELDOUT, CHOICE)[0]
    choice = query_to_example(choice_query)
    # Repeating both options is not choosing one.
    options = choice_query.question.split(": ")[1].rstrip("?")
    verdict = task_for_family(CHOICE).check(choice, options)
    assert not verdict.correct and verdict.score == 0.0 and verdict.extracted == options


@pytest.mark.parametrize("response", [REFUSAL, "i don't know.", "I do not know!", " I don't know! It is hard."])
def test_refusal_is_recognised(world, response):
    for family in FAMILIES:
        example = query_to_example(world.queries_for(HELDOUT, family)[0])
        verdict = task_for_family(family).check(example, response)
        assert verdict.refused and not verdict.correct and verdict.extracted is None


def test_an_answer_mentioning_not_knowing_is_not_a_refusal(world):
    query = world.queries_for(HELDOUT, KNOWLEDGE)[0]
    verdict = task_for_family(KNOWLEDGE).check(query_to_example(query), f"{query.answer}. I don't know why.")
    assert not verdict.refused and not verdict.correct


def test_empty_response_is_wrong_not_refused(world):
    example = query_to_example(world.queries_for(HELDOUT, SKILL)[0])
    verdict = task_for_family(SKILL).check(example, "   ")
    assert not verdict.correct and not verdict.refused and verdict.extracted is None


def test_wrong_answer_type_is_rejected(world):
    # A number example (as a benchmark would have) handed to a toy task is a wiring error, not a wrong answer.
    example = dataclasses.replace(query_to_example(world.queries_for(HELDOUT, SKILL)[0]), answer_type="number",
                                  gold="3")
    with pytest.raises(ValueError, match="answer_type"):
        task_for_family(SKILL).check(example, "3")
