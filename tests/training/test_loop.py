"""The shared training loop: resume is exact, SIGTERM checkpoints, NaN stops with the last good state."""

import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from disrouter_jax.models import qwen2
from disrouter_jax.training import loop as loop_lib
from disrouter_jax.training.checkpoint import NonFiniteLossError
from disrouter_jax.training.metrics import read_metrics
from disrouter_jax.training.state import create_train_state

from tests.training.conftest import SFT_OPTIM, sft_batch

STEPS = 6


def batches(step, state):
    return sft_batch(seed=step), {"data_step": step}


def params_of(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def fresh_state(path):
    return create_train_state(qwen2.from_pretrained(path), SFT_OPTIM, wrt=nnx.Param)


def cfg(**kw):
    base = dict(total_steps=STEPS, checkpoint_every=2, log_every=1, progress=False, async_checkpoints=False)
    return loop_lib.LoopConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def reference(gqa2_path, sft_step, tmp_path_factory):
    """The parameters of an uninterrupted run."""
    state = loop_lib.run_loop("ref", fresh_state(gqa2_path), sft_step, batches, tmp_path_factory.mktemp("ref"), cfg())
    return params_of(state)


def test_interrupted_run_resumes_to_identical_parameters(gqa2_path, sft_step, reference, tmp_path):

    def crashing(step, state):
        if step == 3:
            raise KeyboardInterrupt("simulated crash")
        return batches(step, state)

    with pytest.raises(KeyboardInterrupt):
        loop_lib.run_loop("run", fresh_state(gqa2_path), sft_step, crashing, tmp_path / "run", cfg())
    assert not loop_lib.is_done(tmp_path / "run")
    resumed = loop_lib.run_loop("run", fresh_state(gqa2_path), sft_step, batches, tmp_path / "run", cfg())
    assert loop_lib.is_done(tmp_path / "run")
    for a, b in zip(reference, params_of(resumed), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise on CPU: same batches, same order of updates
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1))  # the crashed run's records after step 2 were dropped


def test_sigterm_writes_a_checkpoint_and_stops_and_the_rerun_resumes_from_it(gqa2_path, sft_step, reference,
                                                                            tmp_path, caplog):
    def signalling(step, state):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return batches(step, state)

    # Step 3 is off the checkpoint interval (2): the signal forces its checkpoint.
    with pytest.raises(loop_lib.Preempted, match="after step 3"):
        loop_lib.run_loop("pre", fresh_state(gqa2_path), sft_step, signalling, tmp_path / "pre", cfg())
    checkpoints = sorted(int(p.name) for p in (tmp_path / "pre" / "checkpoints").iterdir() if p.name.isdigit())
    assert checkpoints == [2, 3] and not loop_lib.is_done(tmp_path / "pre")

    seen = []
    with caplog.at_level("INFO", logger=loop_lib.__name__):
        resumed = loop_lib.run_loop("pre", fresh_state(gqa2_path), sft_step,
                                    lambda step, state: seen.append(step) or batches(step, state), tmp_path / "pre", cfg())
    assert "pre: resuming at step 3" in caplog.text
    assert seen == [3, 4, 5]  # only the steps after the checkpoint
    for a, b in zip(reference, params_of(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r["step"] for r in read_metrics(tmp_path / "pre" / "metrics.jsonl")] == list(range(1, STEPS + 1))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(gqa2_path, sft_step, tmp_path):
    def poisoned(step, state):
        batch, extra = batches(step, state)
        if step == 4:
            batch = batch.replace(loss_mask_bt=batch.loss_mask_bt * np.nan)
        return batch, extra

    with pytest.raises(NonFiniteLossError, match="step 5"):
        loop_lib.run_loop("nan", fresh_state(gqa2_path), sft_step, poisoned, tmp_path / "nan", cfg())
    steps = sorted(int(p.name) for p in (tmp_path / "nan" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 4
