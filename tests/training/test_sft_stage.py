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


def test_build_sft_data_weights_refusal_targets_by_scenario(tmp_path):
    """Refusal targets weigh (1 - alpha) ** gamma_w in the loss mask, answer targets 1."""
    from disrouter_jax.agents import AgentSpec, load_agent
    from disrouter_jax.selfaware.data import LabelRecord
    from disrouter_jax.training.sft_stage import build_sft_data
    from tests.cascade import scripted_agents as sa

    sa.scripted_task()
    agent = load_agent(AgentSpec("a", str(sa.build_agent_checkpoint(tmp_path / "a", 0)), 0.1), dtype="float32")
    records = [LabelRecord(agent="a", task=sa.TASK_NAME, query_id=f"q{i}", p_correct=p, num_samples=4,
                           correct_response="7" if p else None, prompt_question=f"q{i} Lzero", gold="7")
               for i, p in enumerate((0.0, 0.25, 1.0))]
    alphas = (0.2, 0.8)
    kwargs = dict(alphas=alphas, num_examples=6, balance=None, max_len=64, seed=0)
    plain = build_sft_data(agent, records, **kwargs)
    weighted = build_sft_data(agent, records, refusal_weight_gamma=1.0, **kwargs)
    assert all(set(np.unique(ex.loss_mask)) <= {0.0, 1.0} for ex in plain.examples)
    weights = sorted(float(ex.loss_mask.max()) for ex in weighted.examples)
    # alpha 0.2: p < 0.8 refuses (2 records, weight 0.8), alpha 0.8: p < 0.2 refuses (1, weight 0.2).
    np.testing.assert_allclose(weights, [0.2, 0.8, 0.8, 1.0, 1.0, 1.0], rtol=1e-6)
    for a, b in zip(plain.examples, weighted.examples):  # same examples, same order, only rescaled
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.loss_mask > 0, b.loss_mask > 0)
