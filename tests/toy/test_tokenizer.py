"""The toy tokenizer: lossless, small, Qwen2.5-style specials and chat template, reloadable offline."""

import json
import string

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from disrouter_jax.tasks.prompts import REFUSAL
from disrouter_jax.toy.tokenizer import (
    DEFAULT_SYSTEM_PROMPT, IM_END, IM_START, PAD_TOKEN, build_tokenizer, load_tokenizer,
    scenario_texts)
from disrouter_jax.toy.world import ToyWorld, WorldConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="module")
def world():
    return ToyWorld(WorldConfig.reduced())


@pytest.fixture(scope="module")
def tokenizer_dir(world, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("toy_tokenizer")
    build_tokenizer(world, out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


def _round_trips(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.decode(ids, skip_special_tokens=False) == text


def test_world_text_round_trips(world, tokenizer):
    texts = [q.question for q in world.queries] + [q.answer for q in world.queries]
    texts += [q + " " + a for q, a in world.skill_corpus[:50]]
    bad = [t for t in texts if not _round_trips(tokenizer, t)]
    assert not bad


def test_refusal_is_ordinary_lossless_text(tokenizer):
    ids = tokenizer.encode(REFUSAL, add_special_tokens=False)
    assert tokenizer.decode(ids) == REFUSAL
    assert not set(ids) & set(tokenizer.all_special_ids)
    assert len(ids) <= 6  # merged like any frequent phrase, not byte by byte


def test_arbitrary_ascii_round_trips(tokenizer):
    rng = np.random.default_rng(0)
    texts = [string.printable, "".join(map(chr, range(128))), "  leading and trailing  ",
             "line\n\nbreaks\r\n\ttabs", "Respond with I don't know! if unsure (alpha=0.5)."]
    texts += ["".join(map(chr, rng.integers(0, 128, size=int(n)))) for n in rng.integers(1, 80, 40)]
    bad = [t for t in texts if not _round_trips(tokenizer, t)]
    assert not bad


def test_scenario_prompts_are_lossless_and_get_their_own_merges(world, tokenizer, tmp_path):
    texts = scenario_texts()
    assert len(texts) == 3 and all(REFUSAL in t for t in texts)
    assert all(_round_trips(tokenizer, t) for t in texts)
    without_scenarios = build_tokenizer(world, tmp_path, extra_texts=())
    assert all(_round_trips(without_scenarios, t) for t in texts)  # byte fallback alone suffices
    for text in texts:
        assert len(tokenizer.encode(text)) < len(without_scenarios.encode(text)) / 2


def test_arbitrary_digits_round_trip_one_token_per_digit(tokenizer):
    rng = np.random.default_rng(1)
    for number in ["0", "007", "-12", "1234567890"] + [str(n) for n in rng.integers(0, 10**9, 20)]:
        ids = tokenizer.encode(number, add_special_tokens=False)
        assert tokenizer.decode(ids) == number
        assert len(ids) == len(number)


def test_non_ascii_round_trips(tokenizer):
    for text in ["café", "naïve Zoë", "数字 42", "emoji 🙂"]:
        assert _round_trips(tokenizer, text)


def test_special_tokens_like_qwen25(tokenizer):
    assert tokenizer.eos_token == IM_END == "<|im_end|>"
    assert tokenizer.pad_token == PAD_TOKEN == "<|endoftext|>"
    assert tokenizer.bos_token is None
    for token in (PAD_TOKEN, IM_START, IM_END):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1
    ids = {tokenizer.convert_tokens_to_ids(t) for t in (PAD_TOKEN, IM_START, IM_END)}
    assert len(ids) == 3 and ids <= set(tokenizer.all_special_ids)
    assert tokenizer.encode("hello", add_special_tokens=True) == tokenizer.encode(
        "hello", add_special_tokens=False)  # no bos/eos added, as in Qwen2.5


def test_vocab_is_small_and_merges_compress_world_text(world, tokenizer):
    assert len(tokenizer) == world.config.tokenizer_vocab_size <= 1000
    question = world.queries[0].question
    assert len(tokenizer.encode(question)) < len(question.encode()) / 2


def test_chat_template_with_default_system_prompt(tokenizer):
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert DEFAULT_SYSTEM_PROMPT == "You are a helpful assistant."


def test_chat_template_with_system_and_assistant_turns(tokenizer):
    messages = [{"role": "system", "content": "Cost first."},
                {"role": "user", "content": "What is the job of Bomo?"},
                {"role": "assistant", "content": REFUSAL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nCost first.<|im_end|>\n"
                    "<|im_start|>user\nWhat is the job of Bomo?<|im_end|>\n"
                    f"<|im_start|>assistant\n{REFUSAL}<|im_end|>\n")
    without_prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False)
    assert without_prompt.endswith("<|im_end|>\n")


def test_chat_template_token_ids_round_trip(tokenizer):
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_START)) == 3
    assert ids.count(tokenizer.eos_token_id) == 2


def test_reload_offline_with_auto_tokenizer(tokenizer_dir, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reloaded = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    assert isinstance(reloaded, PreTrainedTokenizerFast)
    text = "What is the home city of Bomo? I don't know! 123"
    assert reloaded.encode(text) == tokenizer.encode(text)
    assert reloaded.chat_template == tokenizer.chat_template
    assert reloaded.eos_token_id == tokenizer.eos_token_id


def test_loads_identically_from_a_qwen2_model_directory(tokenizer_dir, tokenizer, tmp_path):
    # An agent directory adds config.json (model_type qwen2); AutoTokenizer must still give the same
    # tokenizer there as from the bare tokenizer directory.
    for name in TOKENIZER_FILES:
        (tmp_path / name).write_bytes((tokenizer_dir / name).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    in_agent_dir = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert type(in_agent_dir) is type(tokenizer)
    text = string.printable + " I don't know! 42"
    assert in_agent_dir.encode(text) == tokenizer.encode(text)
    assert in_agent_dir.decode(in_agent_dir.encode(text)) == text


def test_build_is_deterministic(world, tokenizer_dir, tmp_path):
    returned = build_tokenizer(world, tmp_path)
    assert isinstance(returned, PreTrainedTokenizerFast)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(TOKENIZER_FILES)
    for name in TOKENIZER_FILES:
        assert (tmp_path / name).read_bytes() == (tokenizer_dir / name).read_bytes(), name


def test_different_world_gives_different_merges(tokenizer_dir, tmp_path):
    build_tokenizer(ToyWorld(WorldConfig.reduced(seed=7)), tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() != (tokenizer_dir / "tokenizer.json").read_bytes()


def test_full_scenario_prompt_round_trips(world, tokenizer):
    from disrouter_jax.tasks.prompts import build_messages, render_prompt

    question = world.queries[0].question
    prompt = render_prompt(tokenizer, build_messages(question, alpha=0.5, task_format_instruction=""))
    assert prompt.startswith("<|im_start|>system\nYou are one of several") and question in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(tokenizer(prompt)["input_ids"]) == prompt
