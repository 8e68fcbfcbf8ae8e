import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from disrouter_jax.generation.sampling import token_logprobs
from disrouter_jax.models import qwen2
from disrouter_jax.selfaware import rewards
from disrouter_jax.selfaware.data import bucket_pad_batch, tokenize_sft_example
from disrouter_jax.training.optim import make_schedule
from disrouter_jax.training.sft import TokenBatch, make_sft_step, sequence_logprobs, sft_loss
from disrouter_jax.training.state import create_train_state

from .conftest import SFT_OPTIM, sft_batch


@pytest.fixture(scope="module")
def model(gqa2_path):
    return qwen2.from_pretrained(gqa2_path)


@nnx.jit
def _jitted_loss(model, batch):
    return sft_loss(model, batch)


@nnx.jit
def _forward(model, input_ids_bt):
    return model(input_ids_bt)


def _loss(model, batch):
    return float(_jitted_loss(model, jax.tree.map(jnp.asarray, batch))[0])


def test_loss_covers_exactly_the_response_tokens(model):
    batch = sft_batch()
    base = _loss(model, batch)
    prompt_or_pad = batch.loss_mask_bt == 0
    other_targets = (batch.targets_bt + 1) % 97
    # Changing targets where the mask is 0 (prompt and padding) leaves the loss unchanged ...
    perturbed = batch.replace(targets_bt=np.where(prompt_or_pad, other_targets, batch.targets_bt))
    assert _loss(model, perturbed) == base
    # ... while changing a single response target changes it.
    row, col = 2, 4
    assert batch.loss_mask_bt[row, col] == 1
    targets = batch.targets_bt.copy()
    targets[row, col] = other_targets[row, col]
    assert abs(_loss(model, batch.replace(targets_bt=targets)) - base) > 1e-4


def test_loss_is_token_mean_of_response_nll(model):
    batch = sft_batch()
    logits = _forward(model, jnp.asarray(batch.input_ids_bt))
    logp = np.asarray(token_logprobs(logits, jnp.asarray(batch.targets_bt)))
    mask = batch.loss_mask_bt
    expected = -(logp * mask).sum() / mask.sum()
    loss, num_tokens, metrics = _jitted_loss(model, jax.tree.map(jnp.asarray, batch))
    assert float(num_tokens) == mask.sum()
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_token_accuracy_counts_the_response_positions_whose_argmax_is_the_target(model):
    batch = sft_batch()
    logits = np.asarray(_forward(model, jnp.asarray(batch.input_ids_bt)))
    argmax = logits.argmax(-1)
    # Every other response position gets its argmax as target, the rest a token that is not.
    rows, cols = np.nonzero(batch.loss_mask_bt)
    hit = np.arange(rows.size) % 2 == 0
    targets = batch.targets_bt.copy()
    targets[rows, cols] = np.where(hit, argmax[rows, cols], (argmax[rows, cols] + 1) % 97)
    # Off the mask the target is the argmax everywhere: it must not count.
    off = batch.loss_mask_bt == 0
    targets[off] = argmax[off]
    _, _, metrics = _jitted_loss(model, jax.tree.map(jnp.asarray, batch.replace(targets_bt=targets)))
    assert float(metrics["token_accuracy"]) == pytest.approx(hit.sum() / rows.size, abs=1e-7)
    assert 0 < hit.sum() < rows.size


def test_batches_from_data_prep_and_full_sequences():
    examples = [tokenize_sft_example([5, 6, 7], [8, 9], eos_id=1), tokenize_sft_example([5], [8], eos_id=1)]
    padded = bucket_pad_batch(examples, [4, 8], pad_id=0)
    batch = TokenBatch.from_padded(padded)
    np.testing.assert_array_equal(batch.loss_mask_bt, [[0, 0, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]])
    full = TokenBatch.from_sequences([[3, 4, 5, 6], [7, 8]], pad_id=0, length=4)
    np.testing.assert_array_equal(full.input_ids_bt, [[3, 4, 5, 0], [7, 0, 0, 0]])
    np.testing.assert_array_equal(full.targets_bt, [[4, 5, 6, 0], [8, 0, 0, 0]])
    np.testing.assert_array_equal(full.loss_mask_bt, [[1, 1, 1, 0], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match="exceeds length"):
        TokenBatch.from_sequences([[1, 2, 3, 4, 5, 6]], pad_id=0, length=4)
    with pytest.raises(ValueError, match="targets_bt"):
        TokenBatch(np.zeros((2, 4), np.int32), np.zeros((2, 3), np.int32), np.zeros((2, 4))).validate()


def test_sft_step_lowers_the_loss_and_reports_metrics(gqa2_path, sft_step):
    batch = sft_batch()
    state = create_train_state(qwen2.from_pretrained(gqa2_path), SFT_OPTIM)
    before = _loss(state.model(), batch)
    state, metrics = sft_step(state, batch)
    after = _loss(state.model(), batch)
    assert after < before - 1e-3
    assert float(metrics["loss"]) == pytest.approx(before, rel=1e-5)
    assert float(metrics["num_tokens"]) == batch.loss_mask_bt.sum()
    assert float(metrics["lr"]) == pytest.approx(float(make_schedule(SFT_OPTIM)(0)))
    assert float(metrics["grad_norm"]) > 0 and float(metrics["update_applied"]) == 1.0
    assert state.step == 1


def test_microbatch_accumulation_equals_the_full_batch_update(gqa2_path, sft_step):
    # Micro-batches hold different numbers of loss tokens (rows 0,2 vs 1,3), so a plain mean of
    # micro-batch means would differ; token weighting must reproduce the full-batch gradient.
    batch = sft_batch()
    full, m_full = sft_step(create_train_state(qwen2.from_pretrained(gqa2_path), SFT_OPTIM), batch)
    optim2 = dataclasses.replace(SFT_OPTIM, num_microbatches=2)
    accumulated, m_acc = make_sft_step(optim2)(create_train_state(qwen2.from_pretrained(gqa2_path), optim2), batch)
    assert float(m_acc["loss"]) == pytest.approx(float(m_full["loss"]), rel=1e-6)
    assert float(m_acc["grad_norm"]) == pytest.approx(float(m_full["grad_norm"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(accumulated.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_sequence_logprobs_match_the_forward_and_are_zero_off_mask(model):
    batch = sft_batch()
    got = np.asarray(sequence_logprobs(model, batch))
    logits = _forward(model, jnp.asarray(batch.input_ids_bt))
    want = np.asarray(token_logprobs(logits, jnp.asarray(batch.targets_bt)))
    mask = batch.loss_mask_bt > 0
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-5)
    assert np.all(got[~mask] == 0.0)


def test_left_padded_rows_with_attention_mask_give_the_same_loss(model):
    # One row of 6 real tokens, right-padded (no attention mask) vs left-padded (with one).
    seq = np.asarray([3, 14, 15, 92, 65, 35, 89], np.int32)
    right = TokenBatch(
        np.asarray([[*seq[:-1], 0, 0]], np.int32), np.asarray([[*seq[1:], 0, 0]], np.int32),
        np.asarray([[0, 0, 1, 1, 1, 1, 0, 0]], np.float32),
    )
    left = TokenBatch(
        np.asarray([[0, 0, *seq[:-1]]], np.int32), np.asarray([[0, 0, *seq[1:]]], np.int32),
        np.asarray([[0, 0, 0, 0, 1, 1, 1, 1]], np.float32), np.asarray([[0, 0, 1, 1, 1, 1, 1, 1]], np.int32),
    )
    assert _loss(model, left) == pytest.approx(_loss(model, right), rel=1e-5)
