"""Tiny agents whose greedy replies are scripted, saved as real HF checkpoints + tokenizers.

How the script is enforced (no training needed, exact and robust):

* A byte-level BPE tokenizer whose merges make the level words and the pieces of ``I don't
  know!`` single tokens. Its chat template renders a fixed header, then only the last message's
  text, and glues ``P`` to it when there is no system (scenario) message, so the prompt's last
  token is the question's last word — a difficulty level ``Lzero``..``Lthree`` — or
  ``LzeroP``..``LthreeP``. A ``Dialect`` fixes the tokenizer's kind, vocabulary order, special
  tokens, header and how the refusal splits: ``CHATML`` (Qwen2.5's kind, ``I| don|'t| know|!``),
  ``QWEN3`` (the same kind, other ids, a ``<|im_start|>user`` header), ``LLAMA3`` (a
  ``PreTrainedTokenizerFast`` with Llama 3's special tokens and header, ``I| don't| know!``).
* The weights (any model family) make the next token a fixed function of the current token: the tokens used
  get one-hot embedding directions, the LM head maps token ``t`` to ``next[t]`` with a large margin,
  and every other weight is small noise (a real, non-trivial forward pass whose effect on the
  argmax is far below the margin).

Agent ``k`` of a ladder answers scenario prompts of level ``j <= k`` and refuses the others; on the
plain prompt it answers every level except ``Lthree`` (so the last agent produces a forced refusal on
``Lthree``). Agent ``k`` answers with the number ``ANSWERS[k]``; after the refusal it rambles
(``blah blah ...``) instead of ending its turn, so only early refusal detection stops it quickly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from disrouter_jax.models import families, hf_io
from disrouter_jax.models.decoder import Decoder
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


@dataclasses.dataclass(frozen=True)
class Dialect:
    """A tokenizer kind for scripted agents (module doc)."""

    name: str
    special_tokens: tuple[str, ...]
    eos: str
    pad: str
    words: tuple[str, ...]  # single tokens (besides the bytes)
    chat_template: str
    llama_kind: bool = False  # PreTrainedTokenizerFast without Qwen2's pre-tokenizer regex
    specials_first: bool = True  # special tokens before the bytes in the vocabulary
    bos: str | None = None


def _template(header: str) -> str:
    return ("{%- set text = messages[-1]['content'] -%}" + header
            + "{% if messages[0]['role'] == 'system' %}{{ text }}{% else %}{{ text }}" + PLAIN_SUFFIX + "{% endif %}")


CHATML = Dialect("chatml", SPECIAL_TOKENS, EOS, SPECIAL_TOKENS[0], WORDS, CHAT_TEMPLATE)
QWEN3 = Dialect("qwen3", SPECIAL_TOKENS + ("<think>", "</think>"), EOS, SPECIAL_TOKENS[0], WORDS,
                _template("<|im_start|>user\n"), specials_first=False)
LLAMA3 = Dialect(
    "llama3", ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "<|eot_id|>", "<|end_of_text|>",
    tuple(f" {lv}" for lv in LEVELS) + tuple(f" {lv}{PLAIN_SUFFIX}" for lv in LEVELS) + (
        " don't", " know!", RAMBLE, "Question"),
    _template("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"), llama_kind=True,
    bos="<|begin_of_text|>")

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


def build_tokenizer(dialect: Dialect = CHATML):
    """A tokenizer of ``dialect`` whose merges make each of its words one token; every other
    text falls back to byte tokens. CHATML and QWEN3 are Qwen2Tokenizers (the class AutoTokenizer
    picks for a Qwen directory)."""
    from tokenizers import pre_tokenizers

    vocab = {token: i for i, token in enumerate(dialect.special_tokens)} if dialect.specials_first else {}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    merges = []
    for word in dialect.words:
        spelled = _byte_level(word)
        for end in range(2, len(spelled) + 1):
            pair = (spelled[: end - 1], spelled[end - 1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(spelled[:end], len(vocab))
    for token in dialect.special_tokens:
        vocab.setdefault(token, len(vocab))
    if dialect.llama_kind:
        return _llama_kind_tokenizer(dialect, vocab, merges)
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token=dialect.eos,
                          pad_token=dialect.pad, add_prefix_space=False,
                          extra_special_tokens=[t for t in dialect.special_tokens if t != dialect.pad],
                          chat_template=dialect.chat_template, clean_up_tokenization_spaces=False)


def _llama_kind_tokenizer(dialect: Dialect, vocab, merges):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    # No split before BPE: the merges alone decide, so " don't" can be one token.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dialect.special_tokens])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=dialect.bos, eos_token=dialect.eos,
                                   pad_token=dialect.pad, chat_template=dialect.chat_template,
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


def build_agent_checkpoint(out_dir: Path, level: int, seed: int = 0, *, family: str = "qwen2",
                           dialect: Dialect = CHATML) -> Path:
    """HF checkpoint dir (weights + tokenizer) of ladder agent ``level`` (see module doc), a
    model of ``family`` with a ``dialect`` tokenizer."""
    tokenizer = build_tokenizer(dialect)
    v = len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids(dialect.eos)
    table = next_token_table(tokenizer, level)
    used = sorted(set(table) | set(table.values()) | {eos})
    assert len(used) <= HIDDEN, (len(used), HIDDEN)
    # What a pool builder calls for an agent of any family: a config, a Decoder, save_pretrained.
    config = families.make_config(family, vocab_size=v, hidden_size=HIDDEN, intermediate_size=32, num_layers=1,
                                  num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=False,
                                  max_position_embeddings=512, eos_token_id=eos)
    # Abstract construction (no random-init programs to compile); every weight is set below.
    model = nnx.eval_shape(lambda: Decoder(config, dtype=jnp.float32, param_dtype=jnp.float32,
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
    hf_io.save_pretrained(model, out_dir)
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
