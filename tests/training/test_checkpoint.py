import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from disrouter_jax.models import qwen2
from disrouter_jax.training.checkpoint import (
    NonFiniteLossError,
    PreemptionGuard,
    TrainCheckpointer,
    check_finite,
)
from disrouter_jax.training.state import create_train_state

from .conftest import SFT_OPTIM, sft_batch

TOTAL_STEPS, INTERRUPT_AT = 4, 2


def _batch(step):
    # A different batch per step, as a data stream would give; the position is the step.
    return sft_batch(seed=100 + step)


def _arrays(state):
    return [np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state))]


def test_resume_after_interruption_is_bitwise_identical(gqa2_path, sft_step, tmp_path):
    uninterrupted = create_train_state(qwen2.from_pretrained(gqa2_path), SFT_OPTIM)
    for step in range(TOTAL_STEPS):
        uninterrupted, _ = sft_step(uninterrupted, _batch(step))

    key = jax.random.key(7)
    first = create_train_state(qwen2.from_pretrained(gqa2_path), SFT_OPTIM)
    with TrainCheckpointer(tmp_path / "ckpt", max_to_keep=2) as ckpt:
        for step in range(INTERRUPT_AT):
            first, _ = sft_step(first, _batch(step))
            ckpt.save(first.step, first, data_position={"next_batch": step + 1}, rng_key=key, extra={"note": "x"})
    del first  # the interrupted process is gone

    with TrainCheckpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() == INTERRUPT_AT and ckpt.all_steps() == [1, 2]
        fresh = create_train_state(qwen2.from_pretrained(gqa2_path), SFT_OPTIM)
        restored = ckpt.maybe_restore(fresh)
    assert restored.step == INTERRUPT_AT and restored.state.step == INTERRUPT_AT
    assert restored.data_position == {"next_batch": INTERRUPT_AT}
    assert restored.extra == {"note": "x"}
    np.testing.assert_array_equal(jax.random.key_data(restored.rng_key), jax.random.key_data(key))
    resumed = restored.state
    for step in range(restored.data_position["next_batch"], TOTAL_STEPS):
        resumed, _ = sft_step(resumed, _batch(step))
    for want, got in zip(_arrays(uninterrupted), _arrays(resumed), strict=True):
        np.testing.assert_array_equal(got, want)


def test_empty_directory_means_fresh_start(gqa2_path, tmp_path):
    with TrainCheckpointer(tmp_path / "none") as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.maybe_restore(create_train_state(qwen2.from_pretrained(gqa2_path), SFT_OPTIM)) is None
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ckpt.restore(create_train_state(qwen2.from_pretrained(gqa2_path), SFT_OPTIM))


def test_raw_uint32_rng_keys_round_trip(gqa2_path, tmp_path):
    state = create_train_state(qwen2.from_pretrained(gqa2_path), SFT_OPTIM)
    raw = jax.random.PRNGKey(3)
    with TrainCheckpointer(tmp_path / "ckpt", async_save=False) as ckpt:
        ckpt.save(0, state, rng_key=raw)
        restored = ckpt.restore(state)
    np.testing.assert_array_equal(np.asarray(restored.rng_key), np.asarray(raw))
    assert restored.data_position is None


def test_sigterm_becomes_a_stop_request_and_handlers_are_restored():
    previous = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.stop_requested
        os.kill(os.getpid(), signal.SIGTERM)
        # The handler runs between bytecodes of the main thread; this process is still alive.
        for _ in range(1000):
            if guard.stop_requested:
                break
        assert guard.stop_requested and guard.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous


def test_sigterm_mid_run_checkpoints_at_the_next_step_boundary(gqa2_path, sft_step, tmp_path):
    state = create_train_state(qwen2.from_pretrained(gqa2_path), SFT_OPTIM)
    with PreemptionGuard() as guard, TrainCheckpointer(tmp_path / "ckpt", save_interval_steps=100) as ckpt:
        for step in range(TOTAL_STEPS):
            state, _ = sft_step(state, _batch(step))
            if step == 0:
                os.kill(os.getpid(), signal.SIGTERM)  # pre-emption notice while training
            if ckpt.should_stop(state.step, guard):
                ckpt.save(state.step, state, data_position=step + 1, force=True)
                break
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [1]  # the interval alone would not have saved step 1
    assert state.step == 1


def test_check_finite_accepts_finite_and_names_step_and_loss():
    assert check_finite(3, {"loss": jnp.float32(1.5)}) == 1.5
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at step 7") as info:
        check_finite(7, {"loss": jnp.float32(jnp.nan)})
    assert info.value.step == 7 and np.isnan(info.value.loss)
    with pytest.raises(NonFiniteLossError, match="inf"):
        check_finite(8, float("inf"))


def test_non_finite_step_is_not_applied_and_the_last_good_checkpoint_stays(gqa2_path, sft_step, tmp_path):
    state = create_train_state(qwen2.from_pretrained(gqa2_path), SFT_OPTIM)
    good = _batch(0)
    # Corrupt data: a NaN in the loss mask makes the loss and every gradient NaN.
    bad_mask = good.loss_mask_bt.copy()
    bad_mask[0, 5] = np.nan
    bad = good.replace(loss_mask_bt=bad_mask)

    with TrainCheckpointer(tmp_path / "ckpt") as ckpt:
        state, metrics = sft_step(state, good)
        ckpt.save(state.step, state, data_position=1)
        before = _arrays(state)
        state, metrics = sft_step(state, bad)
        assert float(metrics["update_applied"]) == 0.0
        with pytest.raises(NonFiniteLossError) as info:
            check_finite(state.step + 1, metrics)  # the loop stops here, before any save
        assert info.value.step == 2 and np.isnan(info.value.loss)
        ckpt.wait_until_finished()
        assert ckpt.latest_step() == 1
        # The state in memory is still the last good one (nothing NaN was written into it).
        for want, got in zip(before, _arrays(state)):
            np.testing.assert_array_equal(got, want)
        assert state.step == 1
        restored = ckpt.restore(create_train_state(qwen2.from_pretrained(gqa2_path), SFT_OPTIM))
    for want, got in zip(before, _arrays(restored.state)):
        np.testing.assert_array_equal(got, want)
