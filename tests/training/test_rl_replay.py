"""The RL stage's replay regulariser (InstructGPT's "PPO-ptx"): the agent's own plain-prompt
answers trained by cross-entropy beside the policy loss."""

import jax
import numpy as np
import pytest

from disrouter_jax.models import qwen2
from disrouter_jax.selfaware.data import LabelRecord
from disrouter_jax.agents import AgentSpec, load_agent
from disrouter_jax.training.optim import OptimConfig
from disrouter_jax.training.rl import RLConfig, make_rl_step, rl_batch_from_rollouts
from disrouter_jax.training.rl_stage import RolloutConfig, rl_batch_fn
from disrouter_jax.training.sft import forward_logits, make_sft_step
from disrouter_jax.training.sft_stage import REPLAY_MIN_P, replay_examples, scenario_prompt_ids
from disrouter_jax.training.state import create_train_state
from tests.cascade import scripted_agents as sa
from tests.training.conftest import sft_batch

OPTIM = OptimConfig(learning_rate=1e-2, total_steps=10, decay="constant", max_grad_norm=10.0, eps=1e-3)


def _rollouts(advantages):
    return rl_batch_from_rollouts([[5, 17, 33, 2]] * 2, [[40, 41, 42], [60, 61]], [[-1.0] * 3, [-1.0] * 2],
                                  advantages, pad_id=0)


def _cross_entropy(model, batch) -> float:
    """Masked token-mean cross-entropy, by hand in numpy from the model's logits."""
    logits = np.asarray(forward_logits(model, batch), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, np.asarray(batch.targets_bt)[..., None], -1)[..., 0]
    mask = np.asarray(batch.loss_mask_bt, np.float64)
    return float(-(picked * mask).sum() / mask.sum())


def test_replay_adds_its_weighted_cross_entropy_to_the_policy_loss(gqa2_path):
    replay = sft_batch(rows=2, width=7, seed=3)
    ce = _cross_entropy(qwen2.from_pretrained(gqa2_path), replay)
    batch = _rollouts([1.0, -1.0])
    # The step donates its state: each run starts from its own copy of the weights.
    _, plain = make_rl_step(OPTIM)(create_train_state(qwen2.from_pretrained(gqa2_path), OPTIM), batch)
    _, mixed = make_rl_step(OPTIM, RLConfig(replay_coef=0.25))(
        create_train_state(qwen2.from_pretrained(gqa2_path), OPTIM), batch.replace(replay=replay))
    assert float(mixed["replay_loss"]) == pytest.approx(ce, rel=1e-5)
    assert float(mixed["loss"]) == pytest.approx(float(plain["loss"]) + 0.25 * ce, rel=1e-5)
    assert "replay_loss" not in plain


def test_with_zero_advantages_the_update_is_the_sft_update_on_the_replay_rows(gqa2_path):
    # Zero advantages give the policy term no gradient: what moves the weights is the replay alone.
    replay = sft_batch(rows=2, width=7, seed=3)
    rl_state, _ = make_rl_step(OPTIM, RLConfig(replay_coef=1.0))(
        create_train_state(qwen2.from_pretrained(gqa2_path), OPTIM), _rollouts([0.0, 0.0]).replace(replay=replay))
    sft_state, _ = make_sft_step(OPTIM)(create_train_state(qwen2.from_pretrained(gqa2_path), OPTIM), replay)
    for a, b in zip(jax.tree.leaves(rl_state.params), jax.tree.leaves(sft_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_replay_coef_without_replay_rows_is_an_error(gqa2_path):
    state = create_train_state(qwen2.from_pretrained(gqa2_path), OPTIM)
    with pytest.raises(ValueError, match="replay_coef=0.5 needs RLBatch.replay"):
        make_rl_step(OPTIM, RLConfig(replay_coef=0.5))(state, _rollouts([1.0, -1.0]))
    with pytest.raises(ValueError, match="RLConfig.replay_coef=-1"):
        RLConfig(replay_coef=-1)


@pytest.fixture(scope="module")
def agent(scripted_ladder):
    sa.scripted_task()
    return load_agent(AgentSpec("a", str(scripted_ladder[0]), 0.1), dtype="float32")


def _records():
    return [LabelRecord(agent="a", task=sa.TASK_NAME, query_id=f"q{i}", p_correct=p, num_samples=4,
                        correct_response="7" if p else None, prompt_question=f"q{i} Lzero", gold="7")
            for i, p in enumerate((0.0, 0.25, 0.5, 1.0))]


def test_each_rollout_batch_carries_replay_rows_of_plain_prompts(agent):
    replay = replay_examples(agent, _records(), seed=0, max_len=64)  # each usual answer once
    usual = [r for r in _records() if r.p_correct >= REPLAY_MIN_P]
    assert len(replay) == len(usual) == 2
    plain_prompts = {tuple(scenario_prompt_ids(agent, r.task, r.prompt_question, None)) for r in usual}
    cfg = RolloutConfig(prompts_per_step=2, group_size=2, alphas=(0.5,), gamma=0.5, temperature=1.0,
                        max_new_tokens=3, normalize_advantages=False, length_buckets=(64,), seed=0, replay_rows=3)
    examples = sa.make_queries([(0, "7"), (1, "7"), (0, "7")])
    state = create_train_state(agent.model, OPTIM)
    seen = []
    for step in range(2):
        batch, _ = rl_batch_fn(agent, examples, cfg, pad_id=0, replay=replay)(step, state)
        ids, targets, mask = (np.asarray(x) for x in (batch.replay.input_ids_bt, batch.replay.targets_bt,
                                                      batch.replay.loss_mask_bt))
        assert ids.shape[0] == 3
        for row in range(3):
            first = int(np.flatnonzero(mask[row])[0]) + 1  # the prompt ends where the loss starts
            seen.append(tuple(ids[row, :first].tolist()))
            assert seen[-1] in plain_prompts
            answer = agent.tokenizer.decode(targets[row][mask[row] > 0].tolist(), skip_special_tokens=True)
            assert answer == "7"
    # Six rows over two examples: each epoch (two rows) holds both, in a seeded order.
    assert all(set(seen[i:i + 2]) == plain_prompts for i in range(0, 6, 2))
    again, _ = rl_batch_fn(agent, examples, cfg, pad_id=0, replay=replay)(1, state)
    np.testing.assert_array_equal(np.asarray(again.replay.input_ids_bt), ids)


def test_replay_rows_without_replay_examples_are_an_error(agent):
    cfg = RolloutConfig(prompts_per_step=1, group_size=1, alphas=(0.5,), gamma=0.5, temperature=1.0,
                        max_new_tokens=3, normalize_advantages=False, length_buckets=(64,), seed=0, replay_rows=2)
    with pytest.raises(ValueError, match="replay_rows=2: no replay rows given"):
        rl_batch_fn(agent, [], cfg, pad_id=0)


def test_an_agent_with_nothing_to_replay_trains_rl_without_it(agent, caplog):
    import ml_collections

    from disrouter_jax import pipeline

    config = ml_collections.ConfigDict({"seed": 0, "sft": {"length_buckets": (64,)}})
    assert len(pipeline.rl_replay_rows(config, agent, _records())) == 2
    never_right = [r for r in _records() if r.p_correct < REPLAY_MIN_P]
    with caplog.at_level("WARNING", logger="disrouter_jax.pipeline"):
        assert pipeline.rl_replay_rows(config, agent, never_right) == ()
    assert "a: no training query answered right at least half the time; RL runs without replay" in caplog.text
