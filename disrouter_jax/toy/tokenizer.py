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

That is the `CHATML` dialect, every agent's in the default pool. A mixed pool also has `LLAMA3`
agents: a `PreTrainedTokenizerFast` (Llama 3's class) with Llama 3's special tokens (after the
BPE vocabulary, as there), its pre-tokenizer (digits in groups of up to three, no normaliser),
its chat template (<|begin_of_text|>, header tokens, <|eot_id|>), trained on the same world's
text: another vocabulary, so every id (the refusal's included) differs from ChatML's.
"""

from __future__ import annotations

import json
import os
import dataclasses
from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
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


# Llama 3's tokenizer: its pre-tokenizer regex (tiktoken's cl100k: digits in groups of 1-3),
# special tokens and chat template (without the tool and date branches; no default system turn).
LLAMA3_PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_BOS, LLAMA3_EOT, LLAMA3_END = "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"
LLAMA3_SPECIAL_TOKENS = (LLAMA3_BOS, LLAMA3_END, "<|start_header_id|>", "<|end_header_id|>", LLAMA3_EOT)
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or message.role == 'system' or message.role == 'assistant' %}"
    "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


@dataclasses.dataclass(frozen=True)
class Dialect:
    """A kind of tokenizer for toy agents: its special tokens, its template and what they need.

    eos ends an assistant turn (the generation stop and the last token of every training row);
    pad pads batches; bos, where set, is the template's first token.
    """

    name: str
    special_tokens: tuple[str, ...]
    eos: str
    pad: str
    bos: str | None
    chat_template: str
    template_texts: tuple[str, ...]  # the template's own text around the turns: frequent, worth merges


CHATML = Dialect("chatml", SPECIAL_TOKENS, IM_END, PAD_TOKEN, None, CHAT_TEMPLATE,
                 ("system\n", "user\n", "assistant\n"))
LLAMA3 = Dialect("llama3", LLAMA3_SPECIAL_TOKENS, LLAMA3_EOT, LLAMA3_END, LLAMA3_BOS, LLAMA3_CHAT_TEMPLATE,
                 ("system", "user", "assistant", "\n\n"))
DIALECTS = {d.name: d for d in (CHATML, LLAMA3)}


def dialect_named(name: str) -> Dialect:
    if name not in DIALECTS:
        raise ValueError(f"tokenizer dialect {name!r} is not known; known: {sorted(DIALECTS)}")
    return DIALECTS[name]


def scenario_texts() -> list[str]:
    """The scenario (α) system prompts: in every self-routing prompt, so worth short encodings."""
    return [scenario_instruction(alpha) for alpha in SUPPORTED_ALPHAS]


def _training_texts(world: ToyWorld, extra_texts: Iterable[str], dialect: Dialect = CHATML) -> list[str]:
    frequent = [REFUSAL, *dialect.template_texts, *extra_texts]
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
                    extra_texts: Iterable[str] | None = None, dialect: Dialect = CHATML) -> PreTrainedTokenizerFast:
    """Train the toy tokenizer on the world's text, save it to out_dir as an HF tokenizer
    directory (tokenizer.json, tokenizer_config.json, chat_template.jinja) and return it as loaded
    back from there, i.e. exactly what every later stage will see.

    CHATML: a Qwen2Tokenizer (a PreTrainedTokenizerFast), the class AutoTokenizer picks for a qwen2
    model directory anyway; LLAMA3: see the module docstring. extra_texts (default:
    `scenario_texts()`) are frequent prompt texts that get merges of their own (the scenario
    prompts shrink ~3x); they only shape the merges, any text is lossless.
    """
    if extra_texts is None:
        extra_texts = scenario_texts()
    texts = _training_texts(world, list(extra_texts), dialect)
    if dialect == CHATML:  # the default pool's tokenizer, exactly as it has always been built
        vocab, merges = _train_vocab_and_merges(texts, world.config.tokenizer_vocab_size)
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
    elif dialect == LLAMA3:
        tokenizer = _llama3_tokenizer(texts, world.config.tokenizer_vocab_size)
    else:
        raise ValueError(f"build_tokenizer: dialect {dialect.name!r} has no builder; known: {sorted(DIALECTS)}")
    tokenizer.add_tokens([AddedToken(name, single_word=True, normalized=False) for name in world.entities])
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return load_tokenizer(out_dir)


def _llama3_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Llama 3's pre-tokenizer and no normaliser; the special tokens come after
    the learned vocabulary (Llama 3 has them at 128000+), so no id matches ChatML's."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=2, show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3.special_tokens])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=LLAMA3.bos, eos_token=LLAMA3.eos,
                                   pad_token=LLAMA3.pad, chat_template=LLAMA3.chat_template,
                                   clean_up_tokenization_spaces=False, model_max_length=MODEL_MAX_LENGTH)


def special_token_ids(tokenizer) -> dict[str, int]:
    """{"eos", "pad", "bos"} ids of a toy tokenizer of any dialect (bos: the template's first token;
    ChatML has none and uses <|endoftext|>, as Qwen2.5's config.json does)."""
    eos, pad = tokenizer.eos_token, tokenizer.pad_token
    if eos is None or pad is None:
        raise ValueError(f"toy tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: eos_token={eos!r}, "
                         f"pad_token={pad!r}; both must be set")
    bos = tokenizer.bos_token or pad
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in (("eos", eos), ("pad", pad), ("bos", bos))}


def load_tokenizer(tokenizer_dir: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer directory written by build_tokenizer, offline."""
    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
