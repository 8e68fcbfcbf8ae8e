import dataclasses
"""The toy tokenizer: lossless byte-level BPE, one token per entity name, Qwen2.5 specials, Qwen3-style
chat template (no default system turn), reloadable offline with AutoTokenizer."""

import json
import string

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from disrouter_jax.tasks.prompts import REFUSAL, SUPPORTED_ALPHAS, build_messages, render_prompt
from disrouter_jax.toy.tokenizer import (
    CHAT_TEMPLATE, IM_END, IM_START, MODEL_MAX_LENGTH, PAD_TOKEN, build_tokenizer, load_tokenizer,
    scenario_texts)
from disrouter_jax.toy.world import CHOICE, KNOWLEDGE, OOD, SKILL, ToyWorld, WorldConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="module")
def world():
    # With the two-option family on (off by default), so that every family's task is exercised.
    return ToyWorld(dataclasses.replace(WorldConfig.reduced(), choice_attributes=("job",)))


@pytest.fixture(scope="module")
def tokenizer_dir(world, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("toy_tokenizer")
    build_tokenizer(world, out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


def _ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def _round_trips(tokenizer, text):
    return tokenizer.decode(_ids(tokenizer, text), skip_special_tokens=False) == text


def _first(world, family):
    return next(q for q in world.queries if q.family == family)


# ---- lossless --------------------------------------------------------------------------------------

def test_world_text_round_trips(world, tokenizer):
    texts = [q.question for q in world.queries] + [q.answer for q in world.queries]
    texts += [q for q, _ in world.fact_rows(4, 5)] + [q.question + " " + q.answer for q in world.queries[:50]]
    texts += world.practice_strings(2, 5, 50, seed=0)
    bad = [t for t in texts if not _round_trips(tokenizer, t)]
    assert not bad


def test_refusal_is_ordinary_lossless_text(tokenizer):
    ids = _ids(tokenizer, REFUSAL)
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


def test_non_ascii_round_trips(tokenizer):
    for text in ["café", "naïve Zoë", "数字 42", "emoji 🙂"]:
        assert _round_trips(tokenizer, text), text


def test_arbitrary_digits_round_trip_one_token_per_digit(tokenizer):
    rng = np.random.default_rng(1)
    for number in ["0", "007", "1234567890"] + [str(n) for n in rng.integers(0, 10**9, 20)]:
        ids = _ids(tokenizer, number)
        assert tokenizer.decode(ids) == number
        assert len(ids) == len(number)


def test_scenario_prompts_are_lossless_and_get_their_own_merges(world, tokenizer, tmp_path):
    texts = scenario_texts()
    assert len(texts) == len(SUPPORTED_ALPHAS) and all(REFUSAL in t for t in texts)
    assert all(_round_trips(tokenizer, t) for t in texts)
    without_scenarios = build_tokenizer(world, tmp_path, extra_texts=())
    assert all(_round_trips(without_scenarios, t) for t in texts)  # byte fallback alone suffices
    for text in texts:
        assert len(_ids(tokenizer, text)) < len(_ids(without_scenarios, text)) / 2


# ---- entity names ----------------------------------------------------------------------------------

def test_every_entity_name_is_one_added_token(world, tokenizer):
    vocab = tokenizer.get_vocab()
    added = tokenizer.get_added_vocab()
    for name in world.entities:
        assert name in vocab and name in added
        assert tokenizer.tokenize(name) == [name]
        assert tokenizer.tokenize(f"What is the job of {name}?")[-2:] == [name, "?"]
    ids = {tokenizer.convert_tokens_to_ids(name) for name in world.entities}
    assert len(ids) == len(world.entities)
    assert not ids & set(tokenizer.all_special_ids)  # ordinary word tokens, kept by decode


def test_every_entity_query_holds_its_entity_as_a_single_token(world, tokenizer):
    for query in world.queries:
        if query.family in (KNOWLEDGE, CHOICE, OOD):
            entity = world.fact(query.fact_id).entity
            ids = _ids(tokenizer, query.question)
            assert ids.count(tokenizer.convert_tokens_to_ids(entity)) == 1, query.question


def test_entity_names_do_not_match_inside_other_words(world, tokenizer):
    # single_word: a longer word that starts or ends with a name is not that name's token.
    name = next(n for n in world.entities if n + "x" not in world.entities)
    name_id = tokenizer.convert_tokens_to_ids(name)
    for text in (name + "x", "x" + name.lower(), "Zq" + name.lower()):
        ids = _ids(tokenizer, text)
        assert name_id not in ids and tokenizer.decode(ids) == text


def test_skill_questions_never_merge_two_letters_into_one_token(world, tokenizer):
    # Counting needs each letter visible on its own: the pre-tokenizer splits at every space.
    for query in world.queries:
        if query.family == SKILL:
            letters = query.question.split(":")[1].split()
            ids = _ids(tokenizer, query.question)
            colon = next(i for i in range(len(ids)) if ":" in tokenizer.decode(ids[:i + 1]))
            pieces = [tokenizer.decode([i]).strip() for i in ids[colon + 1:]]
            assert all(len(p) <= 1 for p in pieces), (query.question, pieces)
            assert "".join(pieces) == "".join(letters)


def test_vocab_is_bpe_part_plus_entity_names_and_merges_compress(world, tokenizer):
    assert len(tokenizer) == world.config.tokenizer_vocab_size + len(world.entities)
    assert len(tokenizer) <= 1000
    question = _first(world, KNOWLEDGE).question
    assert len(_ids(tokenizer, question)) < len(question.encode()) / 2


# ---- specials and chat template --------------------------------------------------------------------

def test_special_tokens_like_qwen25(tokenizer):
    assert tokenizer.eos_token == IM_END == "<|im_end|>"
    assert tokenizer.pad_token == PAD_TOKEN == "<|endoftext|>"
    assert IM_START == "<|im_start|>"
    assert tokenizer.bos_token is None
    assert [tokenizer.convert_tokens_to_ids(t) for t in (PAD_TOKEN, IM_START, IM_END)] == [0, 1, 2]
    for token in (PAD_TOKEN, IM_START, IM_END):
        assert len(_ids(tokenizer, token)) == 1
    assert {0, 1, 2} <= set(tokenizer.all_special_ids)
    assert tokenizer.encode("hello", add_special_tokens=True) == _ids(tokenizer, "hello")  # no bos/eos
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH


def test_chat_template_has_no_default_system_turn(tokenizer):
    messages = [{"role": "user", "content": "Count the letters: a b"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>user\nCount the letters: a b<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_chat_template_with_system_and_assistant_turns(tokenizer):
    messages = [{"role": "system", "content": "Cost first."},
                {"role": "user", "content": "What is the job of Bomo?"},
                {"role": "assistant", "content": REFUSAL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nCost first.<|im_end|>\n"
                    "<|im_start|>user\nWhat is the job of Bomo?<|im_end|>\n"
                    f"<|im_start|>assistant\n{REFUSAL}<|im_end|>\n")
    without_prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False)
    assert without_prompt.endswith("<|im_end|>\n") and "assistant" not in without_prompt


def test_chat_template_token_ids_round_trip(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count the letters: a b"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_START)) == 3
    assert ids.count(tokenizer.eos_token_id) == 2


def test_full_scenario_prompt_round_trips(world, tokenizer):
    question = _first(world, CHOICE).question
    prompt = render_prompt(tokenizer, build_messages(question, alpha=0.5, task_format_instruction=""))
    assert prompt.startswith("<|im_start|>system\nYou are one of several") and question in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(tokenizer(prompt)["input_ids"]) == prompt
    plain = render_prompt(tokenizer, build_messages(question, alpha=None, task_format_instruction=""))
    assert plain == f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


# ---- saving and loading ----------------------------------------------------------------------------

def test_reload_offline_with_auto_tokenizer(world, tokenizer_dir, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reloaded = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    assert isinstance(reloaded, PreTrainedTokenizerFast)
    text = f"What is the job of {world.entities[0]}? I don't know! 123"
    assert reloaded.encode(text) == tokenizer.encode(text)
    assert reloaded.convert_tokens_to_ids(world.entities[0]) == tokenizer.convert_tokens_to_ids(world.entities[0])
    assert reloaded.chat_template == tokenizer.chat_template
    assert reloaded.eos_token_id == tokenizer.eos_token_id
    assert len(reloaded) == len(tokenizer)


def test_loads_identically_from_a_qwen2_model_directory(world, tokenizer_dir, tokenizer, tmp_path):
    # An agent directory adds config.json (model_type qwen2); AutoTokenizer must still give the same
    # tokenizer there as from the bare tokenizer directory.
    for name in TOKENIZER_FILES:
        (tmp_path / name).write_bytes((tokenizer_dir / name).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    in_agent_dir = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert type(in_agent_dir) is type(tokenizer)
    text = string.printable + f" I don't know! 42 {world.entities[-1]}"
    assert in_agent_dir.encode(text) == tokenizer.encode(text)
    assert in_agent_dir.decode(in_agent_dir.encode(text)) == text


def test_build_is_deterministic_and_writes_only_the_tokenizer_files(world, tokenizer_dir, tmp_path):
    returned = build_tokenizer(world, tmp_path)
    assert isinstance(returned, PreTrainedTokenizerFast)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(TOKENIZER_FILES)
    for name in TOKENIZER_FILES:
        assert (tmp_path / name).read_bytes() == (tokenizer_dir / name).read_bytes(), name


def test_different_world_gives_different_tokenizer(world, tokenizer_dir, tmp_path):
    other_world = ToyWorld(WorldConfig.reduced(seed=7))
    other = build_tokenizer(other_world, tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() != (tokenizer_dir / "tokenizer.json").read_bytes()
    # The new world's names are whole tokens; the old world's names (not also new ones) are not.
    assert all(other.tokenize(name) == [name] for name in other_world.entities)
    stale = [n for n in world.entities if n not in other_world.entities]
    assert stale and all(len(other.tokenize(name)) > 1 for name in stale)


# ---- the Llama-3 dialect (mixed pools) ------------------------------------------------------------

@pytest.fixture(scope="module")
def llama3_tokenizer(world, tmp_path_factory):
    from disrouter_jax.toy.tokenizer import LLAMA3

    return build_tokenizer(world, tmp_path_factory.mktemp("toy_tokenizer_llama3"), dialect=LLAMA3)


def test_llama3_dialect_is_lossless_with_its_own_specials_after_the_vocabulary(world, tokenizer, llama3_tokenizer):
    from disrouter_jax.toy.tokenizer import LLAMA3, LLAMA3_SPECIAL_TOKENS, special_token_ids

    texts = [q.question + " " + q.answer for q in world.queries[:200]] + [REFUSAL, string.printable]
    assert all(_round_trips(llama3_tokenizer, t) for t in texts)
    special = [llama3_tokenizer.convert_tokens_to_ids(t) for t in LLAMA3_SPECIAL_TOKENS]
    # As in Llama 3: the specials follow the learned vocabulary (ChatML's come first, ids 0-2).
    assert special == list(range(world.config.tokenizer_vocab_size, world.config.tokenizer_vocab_size + 5))
    assert IM_END not in llama3_tokenizer.get_vocab() and LLAMA3.eos not in tokenizer.get_vocab()
    assert special_token_ids(llama3_tokenizer) == {"eos": special[4], "pad": special[1], "bos": special[0]}
    assert special_token_ids(tokenizer) == {"eos": 2, "pad": 0, "bos": 0}  # ChatML: bos = <|endoftext|>
    for name in world.entities:  # one added token each, as in ChatML
        assert llama3_tokenizer.tokenize(name) == [name]
        assert llama3_tokenizer.tokenize(f"What is the job of {name}?")[-2:] == [name, "?"]
    assert _ids(llama3_tokenizer, REFUSAL) != _ids(tokenizer, REFUSAL)


def test_llama3_dialect_renders_llama3_chats_and_reloads_as_is(llama3_tokenizer):
    messages = build_messages("Who is it?", alpha=0.5, task_format_instruction="")
    text = llama3_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    system = messages[0]["content"]
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + system + "<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\n" + messages[1]["content"] + "<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    again = AutoTokenizer.from_pretrained(llama3_tokenizer.name_or_path, local_files_only=True)
    assert again.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
    assert _ids(again, text) == _ids(llama3_tokenizer, text)


def test_both_dialects_pass_the_checks_every_run_makes_first(tokenizer_dir, llama3_tokenizer, tmp_path):
    """`make demo` runs the same input checks as the paper setup (disrouter_jax/preflight.py)."""
    from disrouter_jax.preflight import check_tokenizer

    llama3_tokenizer.save_pretrained(tmp_path)
    assert check_tokenizer(tokenizer_dir, "toy chatml") == []
    assert check_tokenizer(tmp_path, "toy llama3") == []
