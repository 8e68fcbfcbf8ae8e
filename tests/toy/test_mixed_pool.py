"""The mixed toy pool (`PoolConfig.reduced(mixed=True)`): toy-s is a Llama with a Llama-3 tokenizer
and chat template, its neighbours the Qwen2 / ChatML agents of the reduced pool.

It builds (only its Llama agent is pre-trained: the Qwen2 agents are the reduced pool's, byte for
byte), transformers loads the Llama agent with our logits and renders its own template, each
agent's refusal is detected with its own tokenizer, and label -> SFT -> RL -> cascade -> report
runs end to end with the report naming both families. The default pool is unchanged: its hashes
are pinned to the values main's code gives, and its files carry no trace of the option.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from disrouter_jax.toy.pool import POOL_FILE, PoolConfig, PoolError
from disrouter_jax.toy.pool_config import MIXED_LEVEL
from tests.toy.tiny_sat import tiny_sat_config

FAMILIES = {"toy-xs": "qwen2", "toy-s": "llama", "toy-m": "qwen2"}
# PoolConfig.reduced()'s hashes with the mixed option off, pinned when the world last changed (24
# values per attribute, no two-option queries): the option must not move them.
REDUCED_FINGERPRINT = "6f2beef19b7e7ca5"
REDUCED_AGENT_FINGERPRINTS = ["70d314656ee12160", "6f19876cc1a1c927", "df0326562fb1fdcb"]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- the default pool is unchanged


def test_the_default_pools_hashes_are_those_of_before_the_option():
    # The family / dialect fields of AgentSpec (the mixed option) leave the default config's text,
    # and so its hashes, as they were without them (first pinned with main's code at 82e873b,
    # before the option existed; re-pinned when the world itself changed).
    assert PoolConfig().fingerprint() == "85532e4362a6728f"
    assert [PoolConfig().agent_fingerprint(k) for k in range(5)] == [
        "4f0c6eec2d9be0ca", "1abd8c1e7df4ea98", "1af1043a8fb9e4c8", "0655d08a496236e7", "934f096e7d29ba60"]
    reduced = PoolConfig.reduced()
    assert reduced.fingerprint() == REDUCED_FINGERPRINT
    assert [reduced.agent_fingerprint(k) for k in range(3)] == REDUCED_AGENT_FINGERPRINTS
    assert not reduced.is_mixed and "family" not in json.dumps(reduced.to_dict())


def test_the_default_pools_files_carry_no_trace_of_the_option(reduced_pool):
    manifest = json.loads((reduced_pool.root / POOL_FILE).read_text())
    assert "tokenizers" not in manifest
    assert all("family" not in a and "dialect" not in a for a in manifest["agents"])
    assert sorted(p.name for p in reduced_pool.root.iterdir() if p.name.startswith("tokenizer")) == ["tokenizer"]
    assert set(reduced_pool.families.values()) == {"qwen2"}


# ------------------------------------------------------------------------------ the mixed pool


def test_the_mixed_pool_has_a_llama_agent_and_reuses_the_qwen2_ones(mixed_pool, reduced_pool):
    assert mixed_pool.families == FAMILIES
    assert PoolConfig.reduced(mixed=True).fingerprint() == mixed_pool.config_hash != reduced_pool.config_hash
    llama = mixed_pool.agents[MIXED_LEVEL]
    config = json.loads((llama.path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is False
    from safetensors import safe_open

    with safe_open(str(llama.path / "model.safetensors"), "np") as f:
        names = set(f.keys())
    assert "lm_head.weight" in names and not any(n.endswith("_proj.bias") for n in names)
    # Its tokenizer is the pool's Llama-3 one, not the ChatML one the others carry.
    assert mixed_pool.tokenizer_dirs["llama3"].name == "tokenizer-llama3"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (llama.path / name).read_bytes() == (mixed_pool.tokenizer_dirs["llama3"] / name).read_bytes()
        assert (llama.path / name).read_bytes() != (mixed_pool.agents[0].path / name).read_bytes()
    # Parameter counts still grow along the ladder (an untied Llama head is large).
    assert [a.num_params for a in mixed_pool.agents] == sorted({a.num_params for a in mixed_pool.agents})
    # The Qwen2 agents were reused, not retrained: their files are the reduced pool's.
    for k in (0, 2):
        assert _digest(mixed_pool.agents[k].path) == _digest(reduced_pool.agents[k].path)
    manifest = json.loads((mixed_pool.root / POOL_FILE).read_text())
    assert [a["family"] for a in manifest["agents"]] == list(FAMILIES.values())
    assert "llama" in mixed_pool.table()


def test_transformers_loads_the_llama_agent_with_our_logits_and_its_own_template(mixed_pool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from disrouter_jax.models import hf_io
    from disrouter_jax.toy.pretrain import plain_messages
    from disrouter_jax.toy.world import HELDOUT, KNOWLEDGE

    llama, qwen = mixed_pool.agents[MIXED_LEVEL], mixed_pool.agents[0]
    question = mixed_pool.world().queries_for(HELDOUT, KNOWLEDGE)[0].question
    messages = plain_messages(question, alpha=0.5)
    tokenizer = AutoTokenizer.from_pretrained(llama.path, local_files_only=True)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert text.endswith(f"{question}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    qwen_text = AutoTokenizer.from_pretrained(qwen.path, local_files_only=True).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    assert qwen_text.startswith("<|im_start|>system\n") and "<|eot_id|>" not in qwen_text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    ours = np.asarray(hf_io.from_pretrained(llama.path)(np.asarray([ids], np.int32)))
    reference = AutoModelForCausalLM.from_pretrained(llama.path, local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = reference(torch.tensor([ids])).logits.numpy()
    assert type(reference).__name__ == "LlamaForCausalLM"
    assert ours.shape == theirs.shape == (1, len(ids), len(tokenizer))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_each_agents_refusal_and_stop_tokens_come_from_its_own_tokenizer(mixed_pool):
    from disrouter_jax import agents as agents_lib
    from disrouter_jax.cascade import engine
    from disrouter_jax.tasks.prompts import REFUSAL

    agents = [agents_lib.load_agent(agents_lib.AgentSpec(a.name, str(a.path), a.cost)) for a in mixed_pool.agents]
    assert [a.family for a in agents] == list(FAMILIES.values())
    refusals = [engine.refusal_token_ids(a) for a in agents]
    assert refusals[0] == refusals[2]  # the two ChatML agents share their tokenizer
    assert refusals[1] != refusals[0]
    assert all(a.decode(r) == REFUSAL for a, r in zip(agents, refusals))
    # The other dialect's ids do not spell the refusal: detection must use the agent's own.
    assert agents[1].decode(refusals[0]) != REFUSAL and agents[0].decode(refusals[1]) != REFUSAL
    eot = agents[1].tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot in agents[1].stop_token_ids and agents[1].tokenizer.eos_token_id == eot
    assert agents[0].tokenizer.convert_tokens_to_ids("<|im_end|>") in agents[0].stop_token_ids


def test_the_cli_and_the_config_option_select_the_mixed_pool(mixed_pool, capsys):
    from disrouter_jax import pipeline
    from disrouter_jax.toy.__main__ import main

    assert main(["build", "--out", str(mixed_pool.root), "--reduced", "--mixed", "--quiet"]) == 0  # reused
    assert "llama/llama3" in capsys.readouterr().out
    config = _eval_config(mixed_pool.root)
    assert [s.name for s in pipeline.ensure_pool(config, mixed_pool.root)] == list(FAMILIES)
    config.pool.mixed = False  # the plain reduced pool is another config: never silently replaced
    with pytest.raises(PoolError, match="overwrite"):
        pipeline.ensure_pool(config, mixed_pool.root)


# ------------------------------------------------------------------------------ end to end


def _eval_config(pool_dir):
    config = tiny_sat_config(pool_dir, train_per_task=8, sft_steps=2, rl_steps=1)
    config.pool.mixed = True
    config.data.eval_per_task = 6
    config.label.num_samples = 2
    config.rl.group_size = 2
    config.eval.routers = ("frugalgpt",)  # no classifier router: its query-embedding programs cost seconds
    config.eval.router_train_per_task = 6
    config.eval.router_steps = 20
    config.eval.max_new_tokens = 12
    config.eval.subpools = ()
    config.eval.sft_ablation = False
    return config


def test_label_sft_rl_cascade_and_report_run_on_the_mixed_pool(mixed_pool, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from disrouter_jax import evaluate
    from disrouter_jax.cascade import engine, log, report
    from disrouter_jax.models import families
    from disrouter_jax.tasks.prompts import REFUSAL

    # The refusal ids the engine's early stop is given, per agent, during the real run.
    asked: dict[str, set] = {}
    own = engine.refusal_token_ids

    def spy(agent):
        ids = own(agent)
        asked.setdefault(agent.name, set()).add(ids)
        return ids

    monkeypatch.setattr(engine, "refusal_token_ids", spy)
    workdir = tmp_path / "work"
    built = evaluate.run_evaluation(_eval_config(mixed_pool.root), workdir)
    # Both trained agents went through every stage and export as their own family.
    for name in ("toy-xs", "toy-s"):
        for stage in ("labels", "sft", "rl", "final"):
            assert (workdir / "agents" / name / stage).is_dir(), (name, stage)
        exported = families.config_from_json(workdir / "agents" / name / "final" / "config.json")
        assert exported.family == FAMILIES[name]
    final_llama = workdir / "agents" / "toy-s" / "final"
    assert (final_llama / "chat_template.jinja").read_bytes() == \
        (mixed_pool.tokenizer_dirs["llama3"] / "chat_template.jinja").read_bytes()
    assert built["families"] == FAMILIES
    assert set(built["families"].values()) == {"qwen2", "llama"}
    records = log.read_routing_log(workdir / report.ROUTING_LOG_FILE)
    assert records and all(v.family == FAMILIES[v.agent] for r in records for v in r.visited)
    assert {v.agent for r in records for v in r.visited} == set(FAMILIES)  # the baselines visit every agent
    # Every agent was run with the refusal as its own (trained) tokenizer spells it.
    assert set(asked) == set(FAMILIES) and all(len(ids) == 1 for ids in asked.values())
    for name, (ids,) in asked.items():
        path = workdir / "agents" / name / "final" if name != "toy-m" else mixed_pool.agent(name).path
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        assert list(ids) == tokenizer.encode(REFUSAL, add_special_tokens=False), name
    assert asked["toy-s"] != asked["toy-xs"] == asked["toy-m"]
    assert set(built["meta"]["refusal_tokens"]) == set(FAMILIES)


def test_the_config_knows_every_tokenizer_dialect_by_name():
    from disrouter_jax.toy import pool_config, tokenizer

    # pool_config keeps its own copy of the names (it stays free of tokenizers): they must agree.
    assert set(pool_config.TOKENIZER_DIALECTS) == set(tokenizer.DIALECTS)
