"""Stage 3's batches (``rl_stage.rl_batch_fn``): rollouts of the current policy on scripted agents
whose replies are known, rewarded +1 / 0 / (1 - alpha)^gamma, group advantages and the rollout
metrics, all recomputed here from the rows themselves."""

import re

import numpy as np
import pytest

from disrouter_jax.agents import Agent, AgentSpec, load_agent
from disrouter_jax.tasks.registry import get_task
from disrouter_jax.training.optim import OptimConfig
from disrouter_jax.training.rl_stage import RolloutConfig, rl_batch_fn
from disrouter_jax.training.sft import sequence_logprobs
from disrouter_jax.training.state import create_train_state
from tests.cascade import scripted_agents as sa

# Ladder agent 1 answers "42" to the scenario prompt of levels 0 and 1 and refuses levels 2 and 3.
# query id -> (level, gold), and what the agent's reply is worth.
QUERIES = [(0, "42"), (1, "7"), (2, "42"), (3, "7"), (1, "42"), (0, "7")]
OUTCOME = {"q0": "right", "q1": "wrong", "q2": "refused", "q3": "refused", "q4": "right", "q5": "wrong"}
MAX_NEW = 5
BUCKETS = (32,)


@pytest.fixture(scope="module")
def agent(scripted_ladder):
    return load_agent(AgentSpec("agent1", str(scripted_ladder[1]), 0.5), dtype="float32")


@pytest.fixture(scope="module")
def state(agent):
    return create_train_state(agent.model, OptimConfig(learning_rate=1e-3, total_steps=10))


@pytest.fixture(scope="module")
def examples():
    return sa.make_queries(QUERIES)


def config(**kw):
    base = dict(prompts_per_step=3, group_size=2, alphas=(0.5,), gamma=0.5, temperature=1e-3, max_new_tokens=MAX_NEW,
                normalize_advantages=False, length_buckets=BUCKETS, seed=0)
    return RolloutConfig(**{**base, **kw})


def rows(agent, batch):
    """Per row: (query id, response token ids) read back from the packed batch."""
    out = []
    for ids, tgt, mask in zip(np.asarray(batch.input_ids_bt), np.asarray(batch.targets_bt),
                              np.asarray(batch.loss_mask_bt)):
        on = np.flatnonzero(mask)
        prompt = agent.decode(ids[: on[0] + 1])
        qid = re.search(r"\b(q\d+) L", prompt).group(1)
        out.append((qid, tgt[on].tolist()))
    return out


@pytest.fixture
def alpha_spy(monkeypatch):
    """The (query id, alpha) of every prompt the stage builds, in order."""
    seen = []
    own = Agent.prompt_ids

    def spy(self, example, alpha):
        seen.append((example.id, alpha))
        return own(self, example, alpha)

    monkeypatch.setattr(Agent, "prompt_ids", spy)
    return seen


def test_rewards_and_metrics_of_known_replies(agent, state, examples):
    make = rl_batch_fn(agent, examples, config(), pad_id=0)
    eos = agent.tokenizer.eos_token_id
    answer_tokens = len(agent.encode_response("42")) + 1  # "42" then the end of turn (kept: RL trains it)
    refused_value = 0.5 ** 0.5
    worth = {"right": 1.0, "wrong": 0.0, "refused": refused_value}
    seen = []
    for step in (0, 1):
        batch, metrics = make(step, state)
        got = rows(agent, batch)
        qids = [q for q, _ in got]
        assert qids[0::2] == qids[1::2]  # each prompt's group of 2 rows is contiguous
        seen += qids[0::2]
        outcomes = [OUTCOME[q] for q in qids]
        for (qid, response), outcome in zip(got, outcomes):
            if outcome == "refused":  # the refusal, then rambling until max_new_tokens
                assert agent.decode(response).startswith("I don't know!") and len(response) == MAX_NEW
            else:
                assert agent.decode(response[:-1]) == "42" and response[-1] == eos
        np.testing.assert_array_equal(np.asarray(batch.advantages_b), 0.0)  # identical replies per group
        answered = [o for o in outcomes if o != "refused"]
        expected = {
            "reward_mean": np.mean([worth[o] for o in outcomes]),
            "refusal_rate": outcomes.count("refused") / 6,
            "accuracy": outcomes.count("right") / 6,
            "answer_accuracy": answered.count("right") / len(answered) if answered else 0.0,
            "refusal_rate/alpha_0.5": outcomes.count("refused") / 6,
            "reward_mean/alpha_0.5": np.mean([worth[o] for o in outcomes]),
            "response_tokens": np.mean([MAX_NEW if o == "refused" else answer_tokens for o in outcomes]),
        }
        assert metrics == pytest.approx(expected, abs=1e-6)
    assert sorted(seen) == sorted(OUTCOME)  # one epoch: every query once


def test_sampled_groups_get_reward_minus_group_mean_and_untempered_logprobs(agent, state, examples, alpha_spy):
    cfg = config(prompts_per_step=4, group_size=4, alphas=(0.2, 0.8), temperature=1.0, seed=1)
    make = rl_batch_fn(agent, examples, cfg, pad_id=0)
    batch, metrics = make(0, state)
    got = rows(agent, batch)
    alphas = dict(alpha_spy)
    assert len(alpha_spy) == 4 and {a for _, a in alpha_spy} == {0.2, 0.8}
    task = get_task(sa.TASK_NAME)
    by_id = {e.id: e for e in examples}
    verdicts = [task.check(by_id[q], agent.decode(r[:-1] if r[-1] == agent.tokenizer.eos_token_id else r))
                for q, r in got]
    reward = np.array([1.0 if v.correct else (1 - alphas[q]) ** 0.5 if v.refused else 0.0
                       for (q, _), v in zip(got, verdicts)])
    groups = reward.reshape(4, 4)
    assert len({tuple(g) for g in groups}) > 1 and np.ptp(groups, axis=1).max() > 0  # sampling varies
    np.testing.assert_allclose(np.asarray(batch.advantages_b), (groups - groups.mean(1, keepdims=True)).ravel(),
                               atol=1e-6)
    refused = np.array([v.refused for v in verdicts])
    correct = np.array([v.correct for v in verdicts])
    alpha_row = np.array([alphas[q] for q, _ in got])
    expected = {"reward_mean": reward.mean(), "refusal_rate": refused.mean(), "accuracy": correct.mean(),
                "answer_accuracy": correct[~refused].mean() if (~refused).any() else 0.0,
                "response_tokens": np.mean([len(r) for _, r in got])}
    for a in (0.2, 0.8):
        expected[f"refusal_rate/alpha_{a:g}"] = refused[alpha_row == a].mean()
        expected[f"reward_mean/alpha_{a:g}"] = reward[alpha_row == a].mean()
    assert metrics == pytest.approx(expected, abs=1e-6)
    # Sampled at temperature 1 here; the stored log-probs are the policy's own (what the ratio needs).
    np.testing.assert_allclose(np.asarray(batch.old_logprobs_bt),
                               np.asarray(sequence_logprobs(state.model(), batch)), atol=2e-5)

    # A pure function of the step: a fresh stage (a resumed run) rebuilds the same batch.
    again, again_metrics = rl_batch_fn(agent, examples, cfg, pad_id=0)(0, state)
    for field in ("input_ids_bt", "targets_bt", "loss_mask_bt", "old_logprobs_bt", "advantages_b"):
        np.testing.assert_array_equal(np.asarray(getattr(again, field)), np.asarray(getattr(batch, field)))
    assert again_metrics == metrics


def test_normalized_advantages_divide_by_the_group_std(agent, state, examples):
    cfg = config(prompts_per_step=4, group_size=4, alphas=(0.2, 0.8), temperature=1.0, seed=1)
    plain, _ = rl_batch_fn(agent, examples, cfg, pad_id=0)(0, state)
    scaled, _ = rl_batch_fn(agent, examples, config(**{**cfg.__dict__, "normalize_advantages": True}), pad_id=0)(0, state)
    centred = np.asarray(plain.advantages_b).reshape(4, 4)
    std = centred.std(axis=1, keepdims=True)
    got = np.asarray(scaled.advantages_b).reshape(4, 4)
    for g in range(4):
        if std[g, 0] > 0:
            np.testing.assert_allclose(got[g] * std[g, 0], centred[g], atol=1e-4)
        else:
            np.testing.assert_array_equal(got[g], 0.0)


def test_a_reference_model_adds_its_logprobs_for_the_kl(agent, state, examples, scripted_ladder):
    reference = load_agent(AgentSpec("agent0", str(scripted_ladder[0]), 0.1), dtype="float32").model
    batch, _ = rl_batch_fn(agent, examples, config(), pad_id=0, reference_model=reference)(0, state)
    np.testing.assert_array_equal(np.asarray(batch.ref_logprobs_bt), np.asarray(sequence_logprobs(reference, batch)))
    assert not np.allclose(np.asarray(batch.ref_logprobs_bt), np.asarray(batch.old_logprobs_bt))
