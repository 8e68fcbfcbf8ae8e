import jax
import numpy as np
import pytest

from disrouter_jax.models import qwen2
from disrouter_jax.training.optim import OptimConfig
from disrouter_jax.training.rl import RLBatch, RLConfig, make_rl_step, rl_batch_from_rollouts
from disrouter_jax.training.sft import sequence_logprobs
from disrouter_jax.training.state import create_train_state


def test_rollouts_are_packed_in_the_next_token_layout():
    batch = rl_batch_from_rollouts(
        prompts=[[10, 11, 12], [20]],
        responses=[[13, 14], [21, 22, 23]],
        old_logprobs=[[-0.5, -0.25], [-1.0, -2.0, -3.0]],
        advantages=[1.0, -1.0],
        pad_id=0,
        length_buckets=[3, 6],
        batch_size=3,
    )
    np.testing.assert_array_equal(batch.input_ids_bt, [[10, 11, 12, 13, 0, 0], [20, 21, 22, 0, 0, 0], [0] * 6])
    np.testing.assert_array_equal(batch.targets_bt, [[11, 12, 13, 14, 0, 0], [21, 22, 23, 0, 0, 0], [0] * 6])
    np.testing.assert_array_equal(batch.loss_mask_bt, [[0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [0] * 6])
    np.testing.assert_array_equal(
        batch.old_logprobs_bt, [[0, 0, -0.5, -0.25, 0, 0], [-1, -2, -3, 0, 0, 0], [0] * 6]
    )
    np.testing.assert_array_equal(batch.advantages_b, [1.0, -1.0, 0.0])
    batch.validate()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(old_logprobs=[[-1.0]]), r"old_logprobs\[0\] has 1 entries for 2 response tokens"),
        (dict(prompts=[[]]), r"prompts\[0\] is empty"),
        (dict(length_buckets=[2]), "exceeds every bucket"),
        (dict(batch_size=0), "do not fit batch_size"),
    ],
)
def test_bad_rollouts_are_rejected_with_a_clear_error(kwargs, message):
    args = dict(prompts=[[1, 2]], responses=[[3, 4]], old_logprobs=[[-1.0, -1.0]], advantages=[1.0], pad_id=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        rl_batch_from_rollouts(**args)


def _response_logprob(model, batch):
    return np.asarray(sequence_logprobs(model, batch)).sum(axis=1)


def test_rl_step_moves_probability_towards_the_positive_advantage_response(gqa2_path):
    # One prompt, two sampled responses: the first rewarded above the group mean (+1), the
    # second below (-1). On-policy updates must raise the first's log-prob and lower the second's.
    prompt = [5, 17, 33, 2]
    good, bad = [40, 41, 42], [60, 61, 62]
    optim = OptimConfig(learning_rate=3e-3, total_steps=100, decay="constant", max_grad_norm=1.0)
    state = create_train_state(qwen2.from_pretrained(gqa2_path), optim)
    reference = qwen2.from_pretrained(gqa2_path)  # frozen copy for the KL term
    rl_cfg = RLConfig(clip_eps=0.2, kl_coef=0.1)  # clipped ratio + KL to the frozen start model
    step = make_rl_step(optim, rl_cfg)

    def batch_for(model):
        placeholder = rl_batch_from_rollouts([prompt, prompt], [good, bad], [[0.0] * 3] * 2, [1.0, -1.0], pad_id=0)
        batch = placeholder.replace(old_logprobs_bt=sequence_logprobs(model, placeholder))
        return batch.replace(ref_logprobs_bt=sequence_logprobs(reference, placeholder))

    start = _response_logprob(state.model(), batch_for(state.model()))
    for _ in range(4):
        state, metrics = step(state, batch_for(state.model()))
        # Old log-probs are the current policy's: the ratio is 1 at the start of each update.
        assert float(metrics["ratio_mean"]) == pytest.approx(1.0, abs=1e-5)
        assert float(metrics["update_applied"]) == 1.0
    end = _response_logprob(state.model(), batch_for(state.model()))
    assert end[0] > start[0] + 0.05
    assert end[1] < start[1] - 0.05
    assert float(metrics["kl"]) > 0.0  # the policy has moved away from the reference


def test_kl_without_reference_logprobs_is_an_error(gqa2_path):
    optim = OptimConfig(learning_rate=1e-3, total_steps=10, decay="constant")
    state = create_train_state(qwen2.from_pretrained(gqa2_path), optim)
    batch = rl_batch_from_rollouts([[1, 2]], [[3]], [[-1.0]], [1.0], pad_id=0)
    with pytest.raises(ValueError, match="kl_coef=0.5 needs RLBatch.ref_logprobs_bt"):
        make_rl_step(optim, RLConfig(kl_coef=0.5))(state, batch)
    with pytest.raises(ValueError, match="advantages_b"):
        RLBatch(batch.input_ids_bt, batch.targets_bt, batch.loss_mask_bt, batch.old_logprobs_bt, np.zeros(3)).validate()
    assert jax.tree.leaves(state.params)  # the state was not consumed by the rejected call
