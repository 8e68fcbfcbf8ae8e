"""Tiny agents whose greedy replies are scripted, saved as real HF checkpoints + tokenizers.

How the script is enforced (no training needed, exact and robust):

* Word-level tokenizer, whitespace split, so ``I don't know!`` is exactly the three tokens
  ``I``, ``don't``, ``know!``. Its chat template renders only the last message's text, and appends
  ``_plain`` to the last word when there is no system (scenario) message. The prompt's last token
  is therefore the question's last word — a difficulty level ``L0``..``L3`` — or ``L<j>_plain``.
* The Qwen2 weights make the next token a fixed function of the current token: embeddings are
  one-hot (hidden size >= vocab), the LM head maps token ``t`` to ``next[t]`` with a large margin,
  and every other weight is small noise (a real, non-trivial forward pass whose effect on the
  argmax is far below the margin).

Agent ``k`` of a ladder answers scenario prompts of level ``j <= k`` and refuses the others; on the
plain prompt it answers every level except ``L3`` (so the last agent produces a forced refusal on
``L3``). Agent ``k`` answers with the number ``ANSWERS[k]``; after the refusal it rambles
(``blah blah ...``) instead of ending its turn, so only early refusal detection stops it quickly.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from disrouter_jax.models import qwen2
from disrouter_jax.models.config import Qwen2Config
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.registry import TASKS, example_jsonl_task, register_task

TASK_NAME = "scripted_levels"
LEVELS = ("L0", "L1", "L2", "L3")
ANSWERS = ("7", "42", "42", "42")
REFUSAL_WORDS = ("I", "don't", "know!")
RAMBLE = "blah"
VOCAB = (("<pad>", "<unk>", "<eos>", "Question:") + LEVELS + tuple(f"{lv}_plain" for lv in LEVELS)
         + REFUSAL_WORDS + (RAMBLE, "7", "42") + tuple(f"q{i}" for i in range(16)))
CHAT_TEMPLATE = (
    "{%- set text = messages[-1]['content'] -%}"
    "{%- if messages[0]['role'] == 'system' -%}{{ text }}{%- else -%}{{ text }}_plain{%- endif -%}"
)
HIDDEN = 48


def scripted_task():
    """The test task (registered once): number answers, no format instruction."""
    if TASK_NAME not in TASKS:
        register_task(example_jsonl_task(TASK_NAME, domain="in", answer_type="number", format_instruction=""))
    return TASKS[TASK_NAME]


def make_queries(levels_and_golds) -> list[Example]:
    """``[(level, gold), ...]`` -> examples ``q<i> L<level>`` with the given gold numbers."""
    scripted_task()
    return [Example(task=TASK_NAME, id=f"q{i}", question=f"q{i} {LEVELS[level]}", gold=gold, answer_type="number")
            for i, (level, gold) in enumerate(levels_and_golds)]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<eos>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def next_token_table(level: int, refuse_plain_levels=(3,)) -> dict[str, str]:
    """Agent answering scenario levels <= ``level``: current word -> next word."""
    table = {word: "<eos>" for word in VOCAB}
    answer = ANSWERS[level]
    for j, lv in enumerate(LEVELS):
        table[lv] = answer if j <= level else REFUSAL_WORDS[0]
        table[f"{lv}_plain"] = REFUSAL_WORDS[0] if j in refuse_plain_levels else answer
    table["I"], table["don't"], table["know!"], table[RAMBLE] = "don't", "know!", RAMBLE, RAMBLE
    return table


def build_agent_checkpoint(out_dir: Path, level: int, seed: int = 0) -> Path:
    """HF checkpoint dir (weights + tokenizer) of ladder agent ``level`` (see module doc)."""
    vocab = {word: i for i, word in enumerate(VOCAB)}
    v = len(VOCAB)
    assert HIDDEN >= v
    config = Qwen2Config(vocab_size=v, hidden_size=HIDDEN, intermediate_size=32, num_layers=1, num_heads=4,
                         num_kv_heads=2, head_dim=12, tie_word_embeddings=False, max_position_embeddings=512,
                         eos_token_id=vocab["<eos>"])
    model = qwen2.Qwen2(config, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = param.get_value().shape
        param.set_value(jnp.asarray(0.01 * rng.standard_normal(shape), jnp.float32))
    model.final_norm.scale_d.set_value(jnp.ones((HIDDEN,), jnp.float32))
    embedding = 0.01 * rng.standard_normal((v, HIDDEN))
    embedding[np.arange(v), np.arange(v)] += 1.0
    model.embedding_vd.set_value(jnp.asarray(embedding, jnp.float32))
    head = 0.01 * rng.standard_normal((HIDDEN, v))
    for word, following in next_token_table(level).items():
        head[vocab[word], vocab[following]] += 2.0
    model.lm_head_dv.set_value(jnp.asarray(head, jnp.float32))
    qwen2.save_pretrained(model, out_dir)
    build_tokenizer().save_pretrained(str(out_dir))
    return Path(out_dir)
