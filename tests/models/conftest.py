"""The models tests' shared reference: left-padded input rows, transformers' logits for them, and
each tiny checkpoint loaded once per module that asks."""

import jax
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from disrouter_jax.models import hf_io

# Row 0 is left-padded by 3, row 1 by 1, row 2 is full: positions restart at each first token.
# Eight tokens: longer than the Mistral checkpoint's window.
INPUT_IDS = np.array([[0, 0, 0, 5, 17, 3, 9, 11], [0, 8, 2, 40, 1, 6, 30, 21], [4, 4, 7, 1, 2, 3, 9, 8]])
MASK = np.array([[0, 0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1], [1] * 8])
POSITIONS = np.maximum(np.cumsum(MASK, -1) - 1, 0)

# Jitted once for every models test module: one compilation per model structure, input shapes and
# shardings (shared across modules and parametrised cases), several times faster than running the
# ops one by one.
forward = jax.jit(lambda model, *args: model(*args))
extend = jax.jit(lambda model, *args, **kwargs: model.extend(*args, **kwargs))


def torch_logits(ckpt_dir, ids=INPUT_IDS, mask=MASK) -> np.ndarray:
    """transformers' float32 logits (the family's own *ForCausalLM) with explicit positions."""
    model = AutoModelForCausalLM.from_pretrained(ckpt_dir).eval()
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions)).logits.numpy()


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    """``loaded(name) -> (checkpoint dir, our model, transformers' logits of INPUT_IDS)``."""
    cache = {}

    def get(name):
        if name not in cache:
            ckpt = tiny_checkpoint(name)
            cache[name] = (ckpt, hf_io.from_pretrained(ckpt), torch_logits(ckpt))
        return cache[name]

    return get
