"""The refusal-rows optimizer: only the chosen embedding rows may change, everything else stays."""

import jax
import numpy as np
import pytest
from flax import nnx

from disrouter_jax.models import qwen2
from disrouter_jax.training.sft_stage import embedding_rows_optimizer
from disrouter_jax.training.state import create_train_state

from .conftest import SFT_OPTIM, sft_batch


def _params(model):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}


def test_only_the_chosen_embedding_rows_are_trained(gqa2_path, sft_step):
    model = qwen2.from_pretrained(gqa2_path)
    vocab = model.config.vocab_size
    before = _params(model)
    batch = sft_batch(vocab=vocab)
    # Tokens read at a position that is trained on: their rows certainly get a gradient.
    rows = sorted(set(np.asarray(batch.input_ids_bt)[np.asarray(batch.loss_mask_bt) > 0].tolist()))[:3]
    state = create_train_state(model, embedding_rows_optimizer(SFT_OPTIM, rows, vocab), wrt=nnx.Param)
    for _ in range(3):
        state, metrics = sft_step(state, batch)
    assert float(metrics["update_applied"]) == 1.0
    after = _params(state.model())
    embedding = next(k for k in after if "embedding_vd" in k)
    changed_rows = np.flatnonzero(np.any(after[embedding] != before[embedding], axis=1))
    assert set(changed_rows.tolist()) == set(rows)  # every chosen row moved (they get a gradient)
    for name in after:
        if name != embedding:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_bad_row_ids_are_rejected():
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        embedding_rows_optimizer(SFT_OPTIM, [10], vocab_size=10)
    with pytest.raises(ValueError, match="must lie in"):
        embedding_rows_optimizer(SFT_OPTIM, [], vocab_size=10)
