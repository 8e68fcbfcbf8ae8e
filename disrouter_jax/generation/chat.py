"""Text in, text out for chat models: chat template -> token ids -> ``generate`` -> strings."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from disrouter_jax.generation.engine import generate

Messages = Sequence[Mapping[str, str]]

# ChatML's end-of-turn and end-of-text tokens (Qwen2.5); stop tokens whenever the vocab has them.
CHATML_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def chat_prompt_ids(tokenizer, messages: Messages) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template + the assistant header.

    The template is rendered to text first and tokenized without extra special tokens, so what
    the model sees is exactly the template's text (the template adds any BOS itself).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no "
                         "chat_template")
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _generation_config_eos(model_dir) -> list[int]:
    if model_dir is None:
        return []
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return []
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def stop_token_ids_for(tokenizer, model_dir: str | os.PathLike | None = None) -> tuple[int, ...]:
    """Stop tokens for chat generation.

    The union of the tokenizer's ``eos_token_id``, the ``eos_token_id`` of
    ``model_dir/generation_config.json`` (``model_dir`` defaults to the tokenizer's directory when
    it was loaded from one) and the ChatML tokens ``<|im_end|>`` / ``<|endoftext|>`` when the
    vocabulary has them. For Qwen2.5-Instruct all three sources give ``<|im_end|>`` and
    ``<|endoftext|>``.
    """
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if model_dir is None:
        name = getattr(tokenizer, "name_or_path", "")
        model_dir = name if name and Path(name).is_dir() else None
    ids.update(_generation_config_eos(model_dir))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in CHATML_STOP_TOKENS if token in vocab)
    if not ids:
        raise ValueError("no stop token: the tokenizer has no eos_token and no ChatML end tokens; "
                         "pass stop_token_ids explicitly")
    return tuple(sorted(ids))


def generate_chat(
    model,
    tokenizer,
    messages_list: Sequence[Messages],
    *,
    model_dir: str | os.PathLike | None = None,
    skip_special_tokens: bool = True,
    **generate_kwargs,
) -> list[list[str]]:
    """Replies to each conversation; ``[conversation][sample] -> str``.

    ``generate_kwargs`` go to ``generate`` (``max_new_tokens`` is required). Stop tokens default to
    ``stop_token_ids_for(tokenizer, model_dir)``; the stop token is not part of the text.
    """
    prompts = [chat_prompt_ids(tokenizer, messages) for messages in messages_list]
    if generate_kwargs.get("stop_token_ids") is None:
        generate_kwargs["stop_token_ids"] = stop_token_ids_for(tokenizer, model_dir)
    generate_kwargs["include_stop"] = False
    generations = generate(model, prompts, **generate_kwargs)
    return [
        [tokenizer.decode(g.token_list, skip_special_tokens=skip_special_tokens) for g in samples]
        for samples in generations
    ]
