"""Tiny agents whose greedy replies are scripted, saved as real HF checkpoints + tokenizers.

How the script is enforced (no training needed, exact and robust):

* A byte-level BPE tokenizer of the Qwen2 kind whose merges make the level words and the pieces
  of ``I don't know!`` single tokens. Its chat template renders only the last message's text and
  glues ``P`` to it when there is no system (scenario) message, so the prompt's last token is the
  question's last word — a difficulty level ``Lzero``..``Lthree`` — or ``LzeroP``..``LthreeP``.
* The Qwen2 weights make the next token a fixed function of the current token: the tokens used
  get one-hot embedding directions, the LM head maps token ``t`` to ``next[t]`` with a large margin,
  and every other weight is small noise (a real, non-trivial forward pass whose effect on the
  argmax is far below the margin).

Agent ``k`` of a ladder answers scenario prompts of level ``j <= k`` and refuses the others; on the
plain prompt it answers every level except ``Lthree`` (so the last agent produces a forced refusal on
``Lthree``). Agent ``k`` answers with the number ``ANSWERS[k]``; after the refusal it rambles
(``blah blah ...``) instead of ending its turn, so only early refusal detection stops it quickly.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from disrouter_jax.models import qwen2
from disrouter_jax.models.families import Qwen2Config
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.registry import TASKS, example_jsonl_task, register_task

TASK_NAME = "scripted_levels"
LEVELS = ("Lzero", "Lone", "Ltwo", "Lthree")
PLAIN_SUFFIX = "P"  # the template glues it to the last word of a prompt without a scenario
ANSWERS = ("7", "42", "42", "42")
RAMBLE = " blah"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS = "<|im_end|>"
# Words that must be single tokens (byte-level spelling is derived below).
WORDS = tuple(f" {lv}" for lv in LEVELS) + tuple(f" {lv}{PLAIN_SUFFIX}" for lv in LEVELS) + (
    " don", "'t", " know", RAMBLE, "Question")
CHAT_TEMPLATE = (
    "{%- set text = messages[-1]['content'] -%}"
    "{%- if messages[0]['role'] == 'system' -%}{{ text }}{%- else -%}{{ text }}" + PLAIN_SUFFIX + "{%- endif -%}"
)
HIDDEN = 64

OOD_TASK_NAME = "scripted_levels_ood"


def scripted_task(name: str = TASK_NAME):
    """A test task (registered once): number answers, no format instruction; the ``_ood`` one is
    out-of-domain."""
    if name not in TASKS:
        domain = "out" if name == OOD_TASK_NAME else "in"
        register_task(example_jsonl_task(name, domain=domain, answer_type="number", format_instruction=""))
    return TASKS[name]


def make_queries(levels_and_golds, task: str = TASK_NAME) -> list[Example]:
    """``[(level, gold), ...]`` -> examples ``q<i> <level word>`` with the given gold numbers."""
    scripted_task(task)
    return [Example(task=task, id=f"q{i}", question=f"q{i} {LEVELS[level]}", gold=gold, answer_type="number")
            for i, (level, gold) in enumerate(levels_and_golds)]


def _byte_level(text: str) -> str:
    from tokenizers import pre_tokenizers

    return "".join(piece for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
                   .pre_tokenize_str(text))


def build_tokenizer():
    """A Qwen2Tokenizer (the class AutoTokenizer picks for a qwen2 directory) whose merges make
    each of ``WORDS`` one token; every other text falls back to byte tokens."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    merges = []
    for word in WORDS:
        spelled = _byte_level(word)
        for end in range(2, len(spelled) + 1):
            pair = (spelled[: end - 1], spelled[end - 1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(spelled[:end], len(vocab))
    return Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token=EOS,
                          pad_token=SPECIAL_TOKENS[0], add_prefix_space=False,
                          extra_special_tokens=list(SPECIAL_TOKENS[1:]), chat_template=CHAT_TEMPLATE,
                          clean_up_tokenization_spaces=False)


def token_id(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, f"{text!r} is not one token: {ids}"
    return ids[0]


def next_token_table(tokenizer, level: int, refuse_plain_levels=(3,)) -> dict[int, int]:
    """Agent answering scenario levels <= ``level``: token id -> next token id (others -> EOS)."""
    from disrouter_jax.tasks.prompts import REFUSAL

    refusal = tokenizer.encode(REFUSAL, add_special_tokens=False)
    answer_first = tokenizer.encode(ANSWERS[level], add_special_tokens=False)
    table = {}
    for j, word in enumerate(LEVELS):
        table[token_id(tokenizer, " " + word)] = answer_first[0] if j <= level else refusal[0]
        plain = token_id(tokenizer, f" {word}{PLAIN_SUFFIX}")
        table[plain] = refusal[0] if j in refuse_plain_levels else answer_first[0]
    chain = list(refusal) + [token_id(tokenizer, RAMBLE)]
    for current, following in zip(chain, chain[1:]):
        table[current] = following
    table[chain[-1]] = chain[-1]  # rambles until max_new_tokens
    for current, following in zip(answer_first, answer_first[1:]):
        table[current] = following
    return table


def build_agent_checkpoint(out_dir: Path, level: int, seed: int = 0) -> Path:
    """HF checkpoint dir (weights + tokenizer) of ladder agent ``level`` (see module doc)."""
    tokenizer = build_tokenizer()
    v = len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    table = next_token_table(tokenizer, level)
    used = sorted(set(table) | set(table.values()) | {eos})
    assert len(used) <= HIDDEN, (len(used), HIDDEN)
    config = Qwen2Config(vocab_size=v, hidden_size=HIDDEN, intermediate_size=32, num_layers=1, num_heads=4,
                         num_kv_heads=2, head_dim=16, tie_word_embeddings=False, max_position_embeddings=512,
                         eos_token_id=eos)
    # Abstract construction (no random-init programs to compile); every weight is set below.
    model = nnx.eval_shape(lambda: qwen2.Qwen2(config, dtype=jnp.float32, param_dtype=jnp.float32,
                                               rngs=nnx.Rngs(seed)))
    rng = np.random.default_rng(seed)
    for _, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = param.get_value().shape
        param.set_value(np.asarray(0.01 * rng.standard_normal(shape), np.float32))
    model.final_norm.scale_d.set_value(np.ones((HIDDEN,), np.float32))
    # Token t of interest gets its own direction; every other token only small noise.
    direction = {token: d for d, token in enumerate(used)}
    embedding = 0.01 * rng.standard_normal((v, HIDDEN))
    for token, d in direction.items():
        embedding[token, d] += 1.0
    head = 0.01 * rng.standard_normal((HIDDEN, v))
    for token in range(v):
        following = table.get(token, eos)
        if token in direction:
            head[direction[token], following] += 1.0
    model.embedding_vd.set_value(embedding.astype(np.float32))
    model.lm_head_dv.set_value(head.astype(np.float32))
    qwen2.save_pretrained(model, out_dir)
    tokenizer.save_pretrained(str(out_dir))
    return Path(out_dir)


def build_ladder(root: Path, levels=(0, 1, 2)) -> list[Path]:
    """One checkpoint per ladder level under ``root`` (``agent<level>``)."""
    return [build_agent_checkpoint(Path(root) / f"agent{level}", level, seed=level) for level in levels]


def expected_route(level: int, pool_levels) -> list[str]:
    """Decisions of a cascade of ladder agents ``pool_levels`` on a query of ``level``; the last
    agent gets the plain prompt and refuses only ``Lthree``."""
    decisions = []
    for position, agent_level in enumerate(pool_levels):
        if position == len(pool_levels) - 1:
            decisions.append("refuse" if level == 3 else "answer")
        else:
            decisions.append("answer" if level <= agent_level else "refuse")
            if decisions[-1] == "answer":
                break
    return decisions
