"""Chat helpers with a tiny ChatML tokenizer built offline."""

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from disrouter_jax.generation import chat_prompt_ids, generate, generate_chat, stop_token_ids_for
from disrouter_jax.models import qwen2
from tests.conftest import build_hf_checkpoint

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = ["system", "user", "assistant", "\n", "you", "are", "helpful", "what", "is", "two",
         "plus", "three", "five", "I", "don't", "know!", "the", "answer", "a", "b", "c", "d"]
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CONVERSATIONS = [
    [{"role": "system", "content": "you are helpful"},
     {"role": "user", "content": "what is two plus three"}],
    [{"role": "user", "content": "the answer"}],
]


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="a"))
    # Spaces separate words; newlines are tokens of their own.
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="removed"),
        pre_tokenizers.Split("\n", behavior="isolated"),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], chat_template=CHATML,
    )


@pytest.fixture(scope="module")
def model(tokenizer, tmp_path_factory):
    ckpt = build_hf_checkpoint(tmp_path_factory.mktemp("chat_model"), vocab_size=len(tokenizer),
                               hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1)
    return qwen2.from_pretrained(ckpt)


def test_chat_prompt_ids_render_the_template_with_the_assistant_header(tokenizer):
    ids = chat_prompt_ids(tokenizer, CONVERSATIONS[1])
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|im_start|>", "user", "\n", "the", "answer", "<|im_end|>", "\n",
        "<|im_start|>", "assistant", "\n"]


def test_chat_prompt_ids_needs_a_template(tokenizer):
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="no chat_template"):
        chat_prompt_ids(bare, CONVERSATIONS[0])


def test_stop_tokens_come_from_tokenizer_chatml_and_generation_config(tokenizer, tmp_path):
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert stop_token_ids_for(tokenizer) == tuple(sorted({im_end, endoftext}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [im_end, 7]}))
    assert stop_token_ids_for(tokenizer, tmp_path) == tuple(sorted({im_end, endoftext, 7}))
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="generation_config.json: not valid JSON"):
        stop_token_ids_for(tokenizer, tmp_path)


def test_generate_chat_decodes_what_generate_produces(tokenizer, model):
    texts = generate_chat(model, tokenizer, CONVERSATIONS, max_new_tokens=8, num_samples=2,
                          temperature=1.0, seed=4)
    prompts = [chat_prompt_ids(tokenizer, c) for c in CONVERSATIONS]
    generations = generate(model, prompts, max_new_tokens=8, num_samples=2, temperature=1.0,
                           seed=4, stop_token_ids=stop_token_ids_for(tokenizer))
    assert len(texts) == 2 and all(len(samples) == 2 for samples in texts)
    for text_samples, gen_samples in zip(texts, generations):
        for text, g in zip(text_samples, gen_samples):
            assert text == tokenizer.decode(g.token_list, skip_special_tokens=True)
            assert "<|im_end|>" not in text
