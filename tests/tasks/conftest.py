"""Fixtures for the task tests: real-data location and a tokenizer with Qwen2.5's chat template."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.qwen25_pool import QWEN2_5_CHAT_TEMPLATE

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = PROJECT_ROOT / ".." / "shared" / "data"
QWEN_TOKENIZER_DIR = SHARED_DATA / "qwen2_5_tokenizer"


def data_dir(task_folder: str) -> Path:
    """../shared/data/<task_folder>, or skip the test when the shared data is absent."""
    path = SHARED_DATA / task_folder
    if not path.is_dir():
        pytest.skip(f"shared benchmark data not found at {path} (only present in the project's CI/workspace)")
    return path


def build_qwen_template_tokenizer():
    """A tiny word-level tokenizer with Qwen2.5's special tokens and its published chat template.

    Prompt rendering (tokenize=False) depends only on the template, so the vocabulary is irrelevant;
    token ids are not Qwen2.5's (tests of ids take ``real_qwen_tokenizer``).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=QWEN2_5_CHAT_TEMPLATE,
    )


@pytest.fixture(scope="session")
def qwen_template_tokenizer():
    """What renders every prompt test: Qwen2.5's published template through transformers'
    ``apply_chat_template`` (the template is checked against the published one in test_prompts.py)."""
    return build_qwen_template_tokenizer()


@pytest.fixture(scope="session")
def real_qwen_tokenizer():
    """The released Qwen2.5 tokenizer from ``../shared/data/qwen2_5_tokenizer``; skips, naming the
    folder, where it is absent (never replaced by another tokenizer)."""
    if not QWEN_TOKENIZER_DIR.is_dir():
        pytest.skip(f"the released Qwen2.5 tokenizer is not at {QWEN_TOKENIZER_DIR.resolve()}: prompts are "
                    "checked with its published chat template only")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER_DIR))
