"""A small byte-level BPE tokenizer for the toy world, saved as a Qwen2.5-style HF tokenizer.

Byte-level like Qwen2.5's: the 256 byte symbols are all in the vocabulary, so any ASCII text
(scenario instructions, the refusal, arbitrary digits) and any NFC-normalised Unicode encodes and
decodes losslessly; merges are learned on the world's text so its questions and answers stay
short. Every entity name of the world is one token of its own (an added, non-special word token),
as a real LLM's vocabulary holds a frequent name whole: an entity an agent never saw in
pre-training is then a token whose embedding it never trained, which is what lets an agent tell
entities it knows from entities it does not (notes in the toy-world issue; Ferrando et al., ICLR
2025, find the same signal in LLMs). Normaliser and pre-tokenizer are Qwen2's (NFC, single digits, words with their leading
space), so numbers go digit by digit as in Qwen2.5. Special tokens and eos/pad match Qwen2.5-Instruct's; the ChatML
template is Qwen3's (no default system turn).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from disrouter_jax.tasks.prompts import REFUSAL, SUPPORTED_ALPHAS, scenario_instruction
from disrouter_jax.toy.world import ToyWorld

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)  # ids 0, 1, 2
MODEL_MAX_LENGTH = 2048

# Texts the agents emit or read in every prompt get this many copies in the merge training, so
# they become a few tokens each instead of one per byte.
_FREQUENT_TEXT_WEIGHT = 50

# ChatML as Qwen3's template writes it, without the tool-calling and thinking branches: a system
# turn only when the conversation has one (Qwen2.5's template adds a default "You are a helpful
# assistant." turn, ten tokens on every toy prompt that teach nothing), then the turns, and the
# assistant header as the generation prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or message.role == 'system' or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def scenario_texts() -> list[str]:
    """The scenario (α) system prompts: in every self-routing prompt, so worth short encodings."""
    return [scenario_instruction(alpha) for alpha in SUPPORTED_ALPHAS]


def _training_texts(world: ToyWorld, extra_texts: Iterable[str]) -> list[str]:
    frequent = [REFUSAL, "system\n", "user\n", "assistant\n", *extra_texts]
    return list(world.tokenizer_texts()) + frequent * _FREQUENT_TEXT_WEIGHT


def _train_vocab_and_merges(texts: list[str], vocab_size: int
                            ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE with exactly Qwen2Tokenizer's normalizer and pre-tokenizer, so the learned
    merges mean the same thing once Qwen2Tokenizer rebuilds the pipeline around them."""
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        # All 256 byte symbols, whether or not the world uses them: this makes any text lossless.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    model = json.loads(backend.to_str())["model"]
    return model["vocab"], [tuple(pair) for pair in model["merges"]]


def build_tokenizer(world: ToyWorld, out_dir: str | os.PathLike,
                    extra_texts: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Train the toy tokenizer on the world's text, save it to out_dir as an HF tokenizer
    directory (tokenizer.json, tokenizer_config.json, chat_template.jinja) and return it as loaded
    back from there, i.e. exactly what every later stage will see.

    It is a Qwen2Tokenizer (a PreTrainedTokenizerFast), the class AutoTokenizer picks for a qwen2
    model directory anyway. extra_texts (default: `scenario_texts()`) are frequent prompt texts
    that get merges of their own (the scenario prompts shrink ~3x); they only shape the merges,
    any text is lossless.
    """
    if extra_texts is None:
        extra_texts = scenario_texts()
    vocab, merges = _train_vocab_and_merges(_training_texts(world, list(extra_texts)),
                                            world.config.tokenizer_vocab_size)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        add_prefix_space=False,
        extra_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.add_tokens([AddedToken(name, single_word=True, normalized=False) for name in world.entities])
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return load_tokenizer(out_dir)


def load_tokenizer(tokenizer_dir: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer directory written by build_tokenizer, offline."""
    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
