"""Pre-training helpers that only decide how much work is done, never what is learned: the
competence check (what it covers, when the scenario set is computed), scoring several scenarios
with one set of compiled programs, and the worker's share of the cores."""

import math

import numpy as np
import pytest

from disrouter_jax.generation import TRACE_COUNTS
from disrouter_jax.models import qwen2
from disrouter_jax.toy import pool as pool_lib
from disrouter_jax.toy import pretrain
from disrouter_jax.toy.pretrain import SKILL_CHECK_PER_LENGTH, CompetenceCheck, PromptIds, score_agent
from disrouter_jax.toy.tokenizer import load_tokenizer


def _check(reduced_pool, level=1, scenario=True):
    world = reduced_pool.world()
    tokenizer = load_tokenizer(reduced_pool.tokenizer_dir)
    return world, CompetenceCheck(world, level, len(reduced_pool.agents), PromptIds(tokenizer), pad_id=0,
                                  target=0.9, seed=0, scenario=scenario)


def test_competence_check_covers_the_clean_facts_and_every_taught_length(reduced_pool):
    world, check = _check(reduced_pool)
    n = len(reduced_pool.agents)
    assert len(check._sets["facts"]) == len(world.known_pairs(1, n))
    low, high = world.config.skill_lengths[0], world.taught_length(1, n)
    skill = check._sets["skill"]
    assert len(skill) == SKILL_CHECK_PER_LENGTH * (high - low + 1)
    assert len(check._sets["scenario"]) == len(check._sets["facts"]) + len(skill)


def test_competence_check_skips_the_scenario_set_until_the_rest_passes(reduced_pool, monkeypatch):
    _, check = _check(reduced_pool)
    scores = {"facts": 0.5, "skill": 1.0, "scenario": 1.0}
    calls = []

    def fake_score(model, name):
        calls.append(name)
        return scores[name]

    monkeypatch.setattr(check, "_score", fake_score)
    first = check(None)
    assert first["facts"] == 0.5 and math.isnan(first["scenario"]) and not check.reached(first)
    assert calls == ["facts", "skill"]
    assert check(None, final=True)["scenario"] == 1.0  # the final report has every set
    scores["facts"] = 0.95
    assert check.reached(check(None))
    scores["scenario"] = 0.8
    assert not check.reached(check(None))


def test_competence_check_without_scenario_rows(reduced_pool, monkeypatch):
    _, check = _check(reduced_pool, scenario=False)
    monkeypatch.setattr(check, "_score", lambda model, name: 0.9)
    assert check(None) == {"facts": 0.9, "skill": 0.9} and check.reached(check(None))


def test_scoring_several_scenarios_shares_compilations_and_answers(reduced_pool):
    agent = reduced_pool.agents[-1]
    model = qwen2.from_pretrained(agent.path)
    tokenizer = load_tokenizer(agent.path)
    world = reduced_pool.world()
    before = TRACE_COUNTS.copy()
    together = score_agent(model, tokenizer, world, alphas=(0.2, None, 0.5), model_dir=agent.path)
    compiled = TRACE_COUNTS - before
    assert compiled["prefill"] <= 1 and compiled["decode"] <= 1  # (0: already compiled by an earlier test)
    alone = [score_agent(model, tokenizer, world, alphas=(alpha,), model_dir=agent.path)[0] for alpha in (None, 0.5)]
    # Padded to the scenario prompts' bucket, the plain prompts get the same answers.
    assert together[1:] == alone
    assert sum(map(len, alone[0].values())) == agent.heldout_correct_total


@pytest.mark.parametrize("cores, workers, groups", [
    ({0, 1}, 2, [{0}, {1}]),
    ({0, 1, 2, 3}, 2, [{0, 2}, {1, 3}]),
    ({0}, 2, [None, None]),
])
def test_workers_get_disjoint_cores(monkeypatch, cores, workers, groups):
    monkeypatch.setattr(pool_lib.os, "sched_getaffinity", lambda pid: cores, raising=False)
    assert pool_lib._core_groups(workers) == groups
