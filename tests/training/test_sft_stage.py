"""SFT data of Self-Awareness Training: scenario targets (refuse iff p < 1 - alpha) plus the
replay regulariser (the agent's own usual plain-prompt answers)."""

import numpy as np
import pytest

from disrouter_jax.agents import AgentSpec, load_agent
from disrouter_jax.selfaware.data import LabelRecord
from disrouter_jax.tasks.prompts import REFUSAL
from disrouter_jax.training.sft_stage import (
    REPLAY_MIN_P, build_sft_data, replay_records, scenario_prompt_ids, sft_batch_fn)
from tests.cascade import scripted_agents as sa

P_CORRECT = (0.0, 0.25, 0.5, 0.75, 1.0, 1.0)


@pytest.fixture(scope="module")
def agent(scripted_ladder):
    sa.scripted_task()
    return load_agent(AgentSpec("a", str(scripted_ladder[0]), 0.1), dtype="float32")


def records():
    return [LabelRecord(agent="a", task=sa.TASK_NAME, query_id=f"q{i}", p_correct=p, num_samples=4,
                        correct_response="7" if p else None, prompt_question=f"q{i} Lzero", gold="7")
            for i, p in enumerate(P_CORRECT)]


def responses(agent, data):
    """(prompt ids, response text) of every example; the response is the loss-masked span."""
    out = []
    for ex in data.examples:
        ids, mask = np.asarray(ex.input_ids), np.asarray(ex.loss_mask)
        # loss_mask marks the positions whose *target* (next token) is a response token.
        first = int(np.flatnonzero(mask)[0]) + 1
        last = int(np.flatnonzero(mask)[-1]) + 1
        out.append((ids[:first].tolist(), agent.decode(ids[first:last + 1])))
    return out


def test_scenario_targets_refuse_below_one_minus_alpha(agent):
    data = build_sft_data(agent, records(), alphas=(0.5,), num_examples=100, balance=None, max_len=64, seed=0)
    assert data.num_replay == 0 and data.num_dropped == 0
    got = {}
    for prompt, text in responses(agent, data):
        question = next(r for r in records() if agent.decode(prompt).find(r.prompt_question) >= 0)
        got[question.query_id] = text
    # alpha 0.5: delta 0.5, p = 0.5 answers (p >= delta), below refuses.
    assert got == {"q0": REFUSAL, "q1": REFUSAL, "q2": "7", "q3": "7", "q4": "7", "q5": "7"}
    assert data.accept_fraction == pytest.approx(4 / 6)


def test_balance_is_fifty_fifty_per_scenario(agent):
    data = build_sft_data(agent, records(), alphas=(0.5,), num_examples=100, balance=0.5, max_len=64, seed=0)
    texts = [t for _, t in responses(agent, data)]
    assert texts.count(REFUSAL) == 2 and len(texts) == 4 and data.accept_fraction == 0.5


def test_balance_scope_pooled_balances_over_all_scenarios_and_says_so(agent):
    # P_CORRECT at alpha 0.2 / 0.8: answer iff p >= 0.8 (2 of 6) / p >= 0.2 (5 of 6): 7 answer and
    # 5 refusal targets over both scenarios; pooled cuts the answers to 5, per scenario each
    # scenario's majority is cut to its minority (0.2: 2 : 4 -> 2 : 2; 0.8: 5 : 1 -> 1 : 1).
    per_alpha = build_sft_data(agent, records(), alphas=(0.2, 0.8), num_examples=100, balance=0.5, max_len=64,
                               seed=0)
    pooled = build_sft_data(agent, records(), alphas=(0.2, 0.8), num_examples=100, balance=0.5, max_len=64,
                            seed=0, balance_scope="pooled")
    assert per_alpha.summary()["balance_scope"] == "per_alpha" and pooled.summary()["balance_scope"] == "pooled"
    assert {a: (c["answers"], c["refusals"]) for a, c in per_alpha.per_alpha} == {0.2: (2, 2), 0.8: (1, 1)}
    counts = {a: (c["answers"], c["refusals"]) for a, c in pooled.per_alpha}
    assert counts[0.2][1] + counts[0.8][1] == 5 and counts[0.2][0] + counts[0.8][0] == 5
    assert counts[0.2][1] == 4 and counts[0.8][1] == 1  # every refusal target kept, where it was
    assert pooled.accept_fraction == 0.5 and all(c["balanced"] for _, c in pooled.per_alpha)
    with pytest.raises(ValueError, match="sft.balance_scope='both'"):
        build_sft_data(agent, records(), alphas=(0.5,), num_examples=4, balance=0.5, max_len=64, seed=0,
                       balance_scope="both")


def test_replay_rows_are_plain_prompts_of_usual_correct_answers(agent):
    recs = records()
    data = build_sft_data(agent, recs, alphas=(0.2, 0.8), num_examples=100, balance=None, max_len=64, seed=0,
                          replay_fraction=0.5)
    num_scenario = len(data.examples) - data.num_replay
    assert data.num_replay == num_scenario  # half of the rows
    plain = {tuple(scenario_prompt_ids(agent, r.task, r.prompt_question, None)): r for r in recs}
    scenario_prompts = [p for p, _ in responses(agent, data)[:num_scenario]]
    assert not any(tuple(p) in plain for p in scenario_prompts)  # scenario rows carry the instruction
    for prompt, text in responses(agent, data)[num_scenario:]:
        record = plain[tuple(prompt)]
        assert record.p_correct >= REPLAY_MIN_P and text == record.correct_response != REFUSAL


def test_replay_picks_only_usual_answers_and_repeats_when_short():
    recs = records()
    picked = replay_records(recs, 7, seed=0)
    assert len(picked) == 7 and {r.query_id for r in picked} == {"q2", "q3", "q4", "q5"}
    assert replay_records(recs, 7, seed=0) == picked  # seeded
    assert replay_records(recs, 0, seed=0) == []


def test_bad_replay_fraction_is_named(agent):
    with pytest.raises(ValueError, match="sft.replay_fraction=1.0"):
        build_sft_data(agent, records(), alphas=(0.5,), num_examples=4, balance=None, max_len=64, seed=0,
                       replay_fraction=1.0)


def test_batches_walk_seeded_epoch_permutations_as_a_pure_function_of_the_step(agent):
    data = build_sft_data(agent, records(), alphas=(0.2, 0.5, 0.8), num_examples=100, balance=None, max_len=64,
                          seed=0)
    n = len(data.examples)
    assert n == 18  # 6 records x 3 scenarios, none dropped
    make = sft_batch_fn(data, batch_size=4, length_buckets=(16, 24, 64), pad_id=0, seed=5)
    rows_by_ids = {}
    for i, ex in enumerate(data.examples):
        rows_by_ids.setdefault(tuple(ex.input_ids.tolist()), []).append(i)
    served, epochs = [], []
    for step in range(9):  # 36 positions: exactly two epochs
        batch, host = make(step, None)
        epochs.append(host["epoch"])
        width = batch.input_ids_bt.shape[1]
        assert batch.input_ids_bt.shape == (4, width) and width in (16, 24, 64)
        for r in range(4):
            length = int(np.flatnonzero(batch.loss_mask_bt[r])[-1]) + 1
            ids = tuple(batch.input_ids_bt[r, :length].tolist())
            candidates = rows_by_ids[ids]
            ex = data.examples[candidates[0]]
            np.testing.assert_array_equal(batch.targets_bt[r, :length], ex.targets)
            np.testing.assert_array_equal(batch.loss_mask_bt[r, :length], ex.loss_mask)
            assert not batch.loss_mask_bt[r, length:].any()
            served.append(ids)
    assert epochs == [step * 4 / n for step in range(9)]
    # Each epoch serves every example once, in its own order.
    every = sorted(tuple(ex.input_ids.tolist()) for ex in data.examples)
    assert sorted(served[:n]) == every and sorted(served[n:]) == every
    assert served[:n] != served[n:]
    # A fresh function (a resumed run) gives the same batch at any step; another seed, another order.
    again = sft_batch_fn(data, batch_size=4, length_buckets=(16, 24, 64), pad_id=0, seed=5)
    for step in (7, 0, 3):
        np.testing.assert_array_equal(again(step, None)[0].input_ids_bt, make(step, None)[0].input_ids_bt)
    other = sft_batch_fn(data, batch_size=4, length_buckets=(16, 24, 64), pad_id=0, seed=6)
    assert any(not np.array_equal(other(s, None)[0].input_ids_bt, make(s, None)[0].input_ids_bt) for s in range(4))
