"""Fixtures for the task tests: real-data location and a tokenizer with Qwen2.5's chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = PROJECT_ROOT / ".." / "shared" / "data"
QWEN_TOKENIZER_DIR = SHARED_DATA / "qwen2_5_tokenizer"

# The "chat_template" value of Qwen/Qwen2.5-*-Instruct tokenizer_config.json, kept in its JSON
# spelling (escapes and all) so it can be compared with the file by eye. A hand copy: test_prompts.py
# checks it byte for byte against a public copy of the published template and its SHA-256.
QWEN2_5_CHAT_TEMPLATE = json.loads(
    r'''"{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"'''
)


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
