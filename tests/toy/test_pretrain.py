"""Pre-training helpers that only decide how much work is done, never what is learned: the recall
check (when the scenario half is computed), scoring several scenarios with one set of compiled
programs, and the worker's share of the cores."""

import math

import numpy as np
import pytest

from disrouter_jax.generation import TRACE_COUNTS
from disrouter_jax.models import qwen2
from disrouter_jax.selfaware.data import TokenizedSFTExample
from disrouter_jax.toy import pool as pool_lib
from disrouter_jax.toy import pretrain
from disrouter_jax.toy.pretrain import RecallCheck, score_agent
from disrouter_jax.toy.tokenizer import load_tokenizer


def _pair(length: int, tag: int) -> TokenizedSFTExample:
    ids = np.full(length, tag, np.int32)
    return TokenizedSFTExample(input_ids=ids, targets=ids, loss_mask=np.ones(length, np.float32))


@pytest.fixture
def fake_recall(monkeypatch):
    """recalled_rows -> one row in `hits[tag]` recalled per row tagged `tag` (0 plain, 1 scenario);
    records the tag and shape of every batch it checks."""
    hits, calls = {0: 1.0, 1: 1.0}, []

    def recalled_rows(model, rows):
        tag = int(rows.input_ids_bt[0, 0])
        calls.append((tag, rows.input_ids_bt.shape))
        num_rows = rows.input_ids_bt.shape[0]
        return np.arange(num_rows) < round(hits[tag] * num_rows)

    monkeypatch.setattr(pretrain, "recalled_rows", recalled_rows)
    return hits, calls


def test_recall_check_skips_the_scenario_half_below_the_target(fake_recall):
    hits, calls = fake_recall
    check = RecallCheck([_pair(3, 0)] * 10, [_pair(7, 1)] * 10, pad_id=9, target=0.9)
    hits[0] = 0.5
    recalled = check(None)
    assert recalled[0] == 0.5 and math.isnan(recalled[1]) and not check.reached(recalled)
    assert [tag for tag, _ in calls] == [0]
    # The final check reports both; both halves share one shape (one compiled program).
    assert check(None, final=True) == (0.5, 1.0)
    assert [shape for _, shape in calls[1:]] == [(10, 7), (10, 7)]


def test_recall_check_stops_only_when_both_halves_reach_the_target(fake_recall):
    hits, calls = fake_recall
    check = RecallCheck([_pair(3, 0)] * 10, [_pair(7, 1)] * 10, pad_id=9, target=0.9)
    hits[0], hits[1] = 1.0, 0.8
    assert check(None) == (1.0, 0.8) and not check.reached((1.0, 0.8))
    hits[1] = 0.9
    assert check.reached(check(None))


def test_recall_check_without_scenario_batches_or_pairs(fake_recall):
    hits, calls = fake_recall
    hits[0] = 0.9
    plain_only = RecallCheck([_pair(3, 0)] * 10, None, pad_id=9, target=0.9)
    assert plain_only(None) == (0.9, None) and plain_only.reached((0.9, None))
    assert RecallCheck([], [], pad_id=9, target=0.9)(None) == (1.0, 1.0)
    assert RecallCheck([], None, pad_id=9, target=0.9)(None) == (1.0, None)


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
