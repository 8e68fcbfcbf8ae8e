"""A tiny pool with Qwen2.5-Instruct's tokenizer conventions, built offline for the paper-setup tests.

Qwen2.5's exact chat template and special tokens (same strings, same order, right after the BPE
vocabulary as in the release, eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos) around a small
byte-level BPE trained here on the text of the ten shared data sets, with Qwen2's normaliser and
pre-tokenizer. The agents are random ``Qwen2ForCausalLM`` checkpoints of one tiny shape with tied
embeddings (as Qwen2.5-0.5B/1.5B/3B), built with transformers: one architecture, so that the
pipeline compiles each program once for all five (on two CPU cores, compiling is most of the
run; untied heads are exported and loaded in tests/models).

A random model is never right, so nothing downstream of labelling would see both classes (SFT
could not balance, RL rewards would all be 0). Each agent therefore has one fixed reply wired into
its last MLP (``wire_reply``): the first refuses everything, the others answer one option letter
each. Everything else is random; the tests assert plumbing, not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

# The "chat_template" value of Qwen/Qwen2.5-*-Instruct tokenizer_config.json, kept in its JSON
# spelling (escapes and all) so it can be compared with the file by eye.
QWEN2_5_CHAT_TEMPLATE = json.loads(
    r'''"{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"'''
)


# Qwen2.5-Instruct's added tokens in id order (151643...): the special ones, then the tool-call and
# fill-in-the-middle markers, which the release does not mark special.
QWEN2_5_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
QWEN2_5_OTHER_ADDED_TOKENS = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
                              "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
QWEN2_5_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
EOS, PAD = "<|im_end|>", "<|endoftext|>"

# The pool: (name, cost, wired reply). Names are the paper pool's, so the paper configs' sub-pools
# apply unchanged.
POOL = (
    ("Qwen2.5-0.5B-Instruct", 0.1, "I don't know!"),
    ("Qwen2.5-1.5B-Instruct", 0.3, "B"),
    ("Qwen2.5-3B-Instruct", 0.5, "C"),
    ("Qwen2.5-7B-Instruct", 0.7, "D"),
    ("Qwen2.5-14B-Instruct", 0.9, "A"),
)
# Two query heads over one KV head (grouped-query attention, as Qwen2.5): at the 1,024-token prompt
# bucket the data sets' passages reach, attention scores are most of the work, so few heads.
SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=4096)
BPE_VOCAB = 2048
ROWS_PER_TASK_FOR_BPE = 200


def corpus(data_dir: Path) -> list[str]:
    """What the tokenizer is trained on: the questions as the prompts show them (up to
    ROWS_PER_TASK_FOR_BPE per data set, from whichever split is there), and, many times over, the
    text every prompt carries (template, system prompts, format instructions, the refusal)."""
    from disrouter_jax.tasks import FORMAT_INSTRUCTIONS, PAPER_TASKS, REFUSAL, get_task, question_text
    from disrouter_jax.tasks.prompts import SUPPORTED_ALPHAS, scenario_instruction

    texts = []
    for name in PAPER_TASKS:
        task = get_task(name)
        split = next(s for s in (task.default_split, "validation", "test", "train") if _has_split(task, data_dir / name, s))
        texts += [question_text(e) for e in task.load_local(data_dir / name, split)[:ROWS_PER_TASK_FOR_BPE]]
    frequent = ["system\n", "user\n", "assistant\n", QWEN2_5_DEFAULT_SYSTEM, REFUSAL,
                *FORMAT_INSTRUCTIONS.values(), *(scenario_instruction(a) for a in SUPPORTED_ALPHAS)]
    return texts + frequent * 50


def _has_split(task, path: Path, split: str) -> bool:
    try:
        return bool(task.local_files(path, split))
    except FileNotFoundError:
        return False


def build_tokenizer(data_dir: Path, out_dir: Path):
    """Trains the BPE and saves a Qwen2Tokenizer directory with Qwen2.5's added tokens and template."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=2, show_progress=False)
    backend.train_from_iterator(corpus(data_dir), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    vocab = dict(model["vocab"])
    for token in QWEN2_5_SPECIAL_TOKENS + QWEN2_5_OTHER_ADDED_TOKENS:  # after the BPE, in Qwen's order
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=[tuple(pair) for pair in model["merges"]], unk_token=None, bos_token=None,
        eos_token=EOS, pad_token=PAD, add_prefix_space=False, errors="replace",
        chat_template=QWEN2_5_CHAT_TEMPLATE, clean_up_tokenization_spaces=False, model_max_length=131072,
        split_special_tokens=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN2_5_SPECIAL_TOKENS[1:])})
    tokenizer.add_tokens(list(QWEN2_5_OTHER_ADDED_TOKENS))
    tokenizer.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(str(out_dir))


def wire_reply(model, tokenizer, reply: str) -> None:
    """Makes ``model`` (a transformers Qwen2ForCausalLM) reply exactly ``reply`` and end its turn,
    whatever the prompt, by turning the first units of its last MLP into a bigram lookup: unit i
    fires on the i-th token of "\n" + reply (the generation prompt ends in "\n") and writes the
    direction of the next token's output embedding. Embeddings are scaled up so the residual at
    that layer is mostly the current token's, and the final norm so the wired token wins by far
    at temperature 1."""
    import torch

    chain = tokenizer.encode("\n" + reply, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids(EOS)]
    if len(set(chain)) != len(chain):
        raise ValueError(f"wire_reply: {reply!r} repeats a token; a bigram lookup cannot spell it")
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(10.0)
        if not model.config.tie_word_embeddings:
            model.lm_head.weight.mul_(10.0)
        model.model.norm.weight.mul_(6.0)
        embed, head, mlp = model.model.embed_tokens.weight, model.lm_head.weight, model.model.layers[-1].mlp
        width = embed.shape[1]
        for unit, (key, target) in enumerate(zip(chain, chain[1:])):
            direction = embed[key] / embed[key].pow(2).mean().sqrt()  # the key token after RMSNorm
            mlp.gate_proj.weight[unit] = 8.0 * direction / width
            mlp.up_proj.weight[unit] = 8.0 * direction / width
            mlp.down_proj.weight[:, unit] = head[target] / head[target].norm()


def build_agent(out_dir: Path, tokenizer, *, reply: str, seed: int, tied: bool = True) -> Path:
    """One agent directory: config.json, model.safetensors, generation_config.json, tokenizer."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    pad, eos = tokenizer.convert_tokens_to_ids(PAD), tokenizer.convert_tokens_to_ids(EOS)
    torch.manual_seed(seed)
    vocab_size = -(-len(tokenizer) // 64) * 64  # padded, as Qwen2.5 pads 151,665 tokens to 151,936
    config = Qwen2Config(vocab_size=vocab_size, tie_word_embeddings=tied, bos_token_id=pad, eos_token_id=eos,
                         rope_theta=1_000_000.0, rms_norm_eps=1e-6, **SHAPE)
    model = Qwen2ForCausalLM(config).eval()
    wire_reply(model, tokenizer, reply)
    model.save_pretrained(out_dir)
    GenerationConfig(bos_token_id=pad, pad_token_id=pad, eos_token_id=[eos, pad], do_sample=True).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_pool(data_dir: Path, root: Path) -> list[dict]:
    """The five agents under ``root``; returns them as ``pool.agents`` entries (cascade order)."""
    tokenizer = build_tokenizer(data_dir, root / "tokenizer")
    agents = []
    for seed, (name, cost, reply) in enumerate(POOL):
        path = build_agent(root / name, tokenizer, reply=reply, seed=seed)
        agents.append({"name": name, "path": str(path), "cost": cost})
    return agents


def copy_without_chat_template(agent_dir: str | Path, out_dir: Path) -> Path:
    """A copy of an agent directory whose tokenizer has no chat template (neither the .jinja file
    nor tokenizer_config.json's field): what a base, non-instruct checkpoint looks like."""
    import shutil

    shutil.copytree(agent_dir, out_dir)
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((out_dir / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))
    return out_dir
