"""The toy agent pool: HF-format agents, the capability ladder, caching, partial rebuilds, determinism.

The reduced pool (`reduced_pool`, tests/toy/conftest.py) is built once per session; tests that
delete or rebuild parts of it work on a copy.
"""

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest

from disrouter_jax.tasks import REFUSAL, get_task, scenario_instruction
from disrouter_jax.toy import pool as pool_lib
from disrouter_jax.toy import tasks as toy_tasks
from disrouter_jax.toy.__main__ import main as cli_main
from disrouter_jax.generation import chat_prompt_ids
from disrouter_jax.toy.pool import (
    AGENT_RECORD_FILE, POOL_FILE, AgentSpec, PoolConfig, PoolError, build_pool, default_costs, load_pool,
    plain_messages)
from disrouter_jax.toy.pretrain import PromptIds, agent_corpus, batch_stream
from disrouter_jax.toy.tokenizer import IM_END, PAD_TOKEN, load_tokenizer
from disrouter_jax.toy.world import FAMILIES, HELDOUT, KNOWLEDGE, SKILL, ToyWorld


def _mtimes(pool):
    return {p: p.stat().st_mtime_ns for agent in pool.agents for p in sorted(agent.path.iterdir())}


def _agent_file_mtimes(root, exclude=()):
    """mtimes of the files of the agents listed in root/pool.json, except those named in exclude."""
    manifest = json.loads((root / POOL_FILE).read_text())
    return {p: p.stat().st_mtime_ns for a in manifest["agents"] if a["name"] not in exclude
            for p in sorted((root / a["path"]).iterdir())}


def _copy_pool(pool, tmp_path):
    destination = tmp_path / "pool"
    shutil.copytree(pool.root, destination)
    return destination


@pytest.fixture
def count_pretraining(monkeypatch):
    """Records the ladder level of every agent pre-trained during the test."""
    levels = []
    original = pool_lib.pretrain_agent

    def recording(config, level, *args, **kwargs):  # noqa: D401
        levels.append(level)
        return original(config, level, *args, **kwargs)

    monkeypatch.setattr(pool_lib, "pretrain_agent", recording)
    return levels


# ------------------------------------------------------------------------------- configuration


def test_default_config_is_a_five_agent_ladder_with_paper_costs():
    config = PoolConfig()
    assert len(config.agents) == 5
    assert config.agent_costs == (0.1, 0.3, 0.5, 0.7, 0.9)
    widths = [a.hidden_size for a in config.agents]
    assert widths == sorted(widths)
    assert len(PoolConfig.reduced().agents) == 3
    assert default_costs(4) == pytest.approx((0.1, 0.3666667, 0.6333333, 0.9))


def test_config_round_trips_through_json_and_hashes_stably():
    config = PoolConfig.reduced(seed=3)
    again = PoolConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.fingerprint() == config.fingerprint()
    assert PoolConfig.reduced(seed=4).fingerprint() != config.fingerprint()
    # An agent's weights do not depend on the costs, so re-costing reuses the agents.
    recosted = dataclasses.replace(config, costs=(0.2, 0.4, 0.6))
    assert recosted.fingerprint() != config.fingerprint()
    assert all(recosted.agent_fingerprint(k) == config.agent_fingerprint(k) for k in range(len(config.agents)))
    assert config.agent_fingerprint(0) != config.agent_fingerprint(1)


def test_default_seed_sets_world_and_pool_seed():
    config = PoolConfig.default(seed=7)
    assert config.seed == 7 and config.world.seed == 7
    assert PoolConfig.reduced(seed=7).world.seed == 7


@pytest.mark.parametrize("change, field", [
    (dict(costs=(0.1, 0.2)), "costs"),
    (dict(costs=(0.4, 0.3, 0.6)), "costs"),
    (dict(knowledge_fraction=1.5), "knowledge_fraction"),
    (dict(recall_target=-0.1), "recall_target"),
    (dict(check_every=0), "check_every"),
    (dict(agents=()), "agents"),
])
def test_bad_pool_config_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"PoolConfig.{field}"):
        dataclasses.replace(PoolConfig.reduced(), **change)


def test_duplicate_agent_names_are_rejected():
    spec = PoolConfig.reduced().agents[0]
    with pytest.raises(ValueError, match="unique"):
        dataclasses.replace(PoolConfig.reduced(), agents=(spec, spec))


@pytest.mark.parametrize("change, field", [
    (dict(name="a/b"), "name"), (dict(hidden_size=0), "hidden_size"), (dict(hidden_size=30, num_heads=4), "hidden_size"),
    (dict(num_kv_heads=3), "num_kv_heads"), (dict(learning_rate=0.0), "learning_rate"), (dict(max_steps=1.5), "max_steps"),
])
def test_bad_agent_spec_names_the_field(change, field):
    with pytest.raises(ValueError, match=rf"\.{field}="):
        dataclasses.replace(PoolConfig.reduced().agents[0], **change)


# ------------------------------------------------------------------------------ training data


@pytest.fixture(scope="module")
def world_and_tokenizer(reduced_pool):
    return reduced_pool.world(), load_tokenizer(reduced_pool.tokenizer_dir)


def test_pretraining_prompt_is_the_toy_task_prompt(world_and_tokenizer):
    world, tokenizer = world_and_tokenizer
    query = world.queries_for(HELDOUT, KNOWLEDGE)[0]
    task = toy_tasks.task_for_family(KNOWLEDGE)
    assert plain_messages(query.question) == task.messages(toy_tasks.query_to_example(query), alpha=None)
    text = tokenizer.apply_chat_template(plain_messages(query.question), tokenize=False, add_generation_prompt=True)
    assert text.endswith(f"<|im_start|>user\n{query.question}<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_ids_splice_gives_the_chat_template_tokens(world_and_tokenizer):
    world, tokenizer = world_and_tokenizer
    questions = [q.question for q in world.queries[::7]]
    prompt_ids = PromptIds(tokenizer)
    for alpha in (None, 0.2, 0.8):
        fast = prompt_ids(questions, alpha)
        assert fast == [chat_prompt_ids(tokenizer, plain_messages(q, alpha)) for q in questions]


def _decoded_pairs(tokenizer, rows):
    eos = tokenizer.convert_tokens_to_ids(IM_END)
    pairs = []
    for ids, start in zip(rows.ids, rows.answer_start):
        assert ids[-1] == eos and eos not in ids[start:-1]
        pairs.append(tokenizer.decode(list(ids[start:-1])))
    return pairs


def test_agent_corpus_is_the_world_rows_in_chat_format(world_and_tokenizer):
    world, tokenizer = world_and_tokenizer
    num_levels = 3
    corpus = agent_corpus(world, 1, num_levels, PromptIds(tokenizer), seed=0, practice_size=64)
    fact_rows = world.fact_rows(1, num_levels)
    assert _decoded_pairs(tokenizer, corpus.facts) == [answer for _, answer in fact_rows]
    assert any(question.startswith("Which is") for question, _ in fact_rows)  # choice rows are in it
    practice = _decoded_pairs(tokenizer, corpus.practice)
    assert len(practice) == 64 and set(practice) <= {str(n) for n in range(1, 10)}
    # Prompt = the toy task prompt of the question (plain: no system turn).
    first = corpus.facts.ids[0][:corpus.facts.answer_start[0]]
    assert list(first) == chat_prompt_ids(tokenizer, plain_messages(fact_rows[0][0]))


def test_scenario_rows_carry_the_routing_prompt_and_plain_answers(world_and_tokenizer):
    world, tokenizer = world_and_tokenizer
    corpus = agent_corpus(world, 0, 3, PromptIds(tokenizer), seed=0, practice_size=64)
    known = world.known_pairs(0, 3)
    answers = _decoded_pairs(tokenizer, corpus.scenario)
    assert answers[:len(known)] == [a for _, a in known]
    assert REFUSAL not in answers
    prompts = {tokenizer.decode(list(ids[:start])) for ids, start in zip(corpus.scenario.ids, corpus.scenario.answer_start)}
    assert all(any(scenario_instruction(a) in p for a in (0.2, 0.5, 0.8)) for p in prompts)


def test_batch_stream_has_fixed_shape_mix_and_even_coverage(world_and_tokenizer):
    world, tokenizer = world_and_tokenizer
    corpus = agent_corpus(world, 1, 3, PromptIds(tokenizer), seed=0, practice_size=64)
    pad = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    stream = batch_stream(corpus, batch_size=16, knowledge_fraction=0.25, pad_id=pad, seed=0)
    num_facts = len(corpus.facts)
    width = max(corpus.facts.longest, corpus.practice.longest) - 1
    fact_rows = []
    for _ in range(num_facts):  # 4 fact rows a step: every fact row exactly 4 times
        batch = next(stream)
        assert batch.input_ids_bt.shape == (16, width) == batch.loss_mask_bt.shape
        # whole-sequence loss: every real token of a row is trained (pre-training, not SFT)
        assert np.array_equal(batch.loss_mask_bt > 0, batch.targets_bt != pad)
        fact_rows += [tuple(row) for row in batch.input_ids_bt[:4]]
    counts = {}
    for row in fact_rows:
        counts[row] = counts.get(row, 0) + 1
    distinct = {tuple(ids[:-1]) + (pad,) * (width - len(ids) + 1) for ids in corpus.facts.ids}
    assert set(counts) == distinct
    multiplicity = {}
    for ids in corpus.facts.ids:  # contested facts repeat a row: count how often each row is listed
        key = tuple(ids[:-1]) + (pad,) * (width - len(ids) + 1)
        multiplicity[key] = multiplicity.get(key, 0) + 1
    assert all(counts[row] == 4 * multiplicity[row] for row in counts)


# ----------------------------------------------------------------------------------- the pool


def test_pool_json_is_the_agent_contract(reduced_pool):
    config = PoolConfig.reduced()
    manifest = json.loads((reduced_pool.root / POOL_FILE).read_text())
    assert manifest["config_hash"] == config.fingerprint() == reduced_pool.config_hash
    assert [a["name"] for a in manifest["agents"]] == [s.name for s in config.agents]
    assert [a["cost"] for a in manifest["agents"]] == list(config.agent_costs)
    params = [a["params"] for a in manifest["agents"]]
    assert params == sorted(set(params))
    world = ToyWorld(config.world)
    for entry, agent in zip(manifest["agents"], reduced_pool.agents):
        assert reduced_pool.root / entry["path"] == agent.path
        assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", AGENT_RECORD_FILE} <= {p.name for p in agent.path.iterdir()}
        assert entry["heldout_total"] == {f: len(world.queries_for(HELDOUT, f)) for f in FAMILIES}
        assert set(entry["heldout_accuracy"]) == set(FAMILIES)
        assert entry["build_seconds"] > 0
        record = json.loads((agent.path / AGENT_RECORD_FILE).read_text())
        assert {f: len(ids) for f, ids in record["heldout_correct_ids"].items()} == entry["heldout_correct"]
    for task_name, task_dir in reduced_pool.task_dirs.items():
        test_examples = get_task(task_name).load_local(task_dir)  # default split: test (= heldout)
        assert len(test_examples) == len(world.queries_for(HELDOUT, toy_tasks.FAMILY_OF_TASK[task_name]))


def test_capability_ladder_on_heldout_queries(reduced_pool):
    correct = [agent.heldout_correct_total for agent in reduced_pool.agents]
    total = sum(reduced_pool.agents[0].heldout_total.values())
    assert all(a < b for a, b in zip(correct, correct[1:])), correct
    assert correct[-1] > correct[0], correct
    assert correct[0] > 0, "the smallest agent should not be useless"
    assert correct[-1] < total, "facts in no corpus keep the largest agent from being perfect"
    knowledge = [agent.heldout_correct[KNOWLEDGE] for agent in reduced_pool.agents]
    assert knowledge[-1] > knowledge[0], knowledge


def test_agents_answer_the_same_under_the_routing_prompt(reduced_pool):
    largest = reduced_pool.agents[-1]
    plain, scenario = largest.heldout_correct_total, sum(largest.heldout_correct_scenario.values())
    assert scenario >= 0.6 * plain > 0, (plain, scenario)


def test_training_stops_once_the_facts_are_recalled(reduced_pool):
    config = reduced_pool.config
    for agent, spec in zip(reduced_pool.agents, config.agents):
        record = json.loads((agent.path / AGENT_RECORD_FILE).read_text())
        steps, losses = zip(*record["train_loss_curve"])
        assert losses[-1] < losses[0]
        # One check every check_every steps, and the last one stopped it: every reduced agent
        # reaches the target well before its max_steps (a safety cap), so the stop rule is what
        # ended training, with the competence it requires.
        assert list(steps) == list(range(config.check_every, record["train_steps"] + 1, config.check_every))
        assert record["train_steps"] < spec.max_steps, (spec.name, record["train_steps"])
        assert set(record["competence"]) == {"facts", "skill", "scenario"}
        assert min(record["competence"].values()) >= config.recall_target, (spec.name, record["competence"])


def test_agents_know_what_they_saw_and_not_what_they_did_not(reduced_pool):
    world = reduced_pool.world()
    largest = reduced_pool.agents[-1]
    record = json.loads((largest.path / AGENT_RECORD_FILE).read_text())
    answered = {world.query(qid).fact_id for qid in record["heldout_correct_ids"][KNOWLEDGE]}
    seen = {f.id for f in world.visible_facts(largest.level, len(reduced_pool.agents))}
    unseen_heldout = {q.fact_id for q in world.queries_for(HELDOUT, KNOWLEDGE)} - seen
    # Recall of seen facts is high; unseen facts can only be hit by a lucky guess of a common value.
    assert len(answered & seen) >= 0.5 * len(seen & {q.fact_id for q in world.queries_for(HELDOUT, KNOWLEDGE)})
    assert len(answered & unseen_heldout) <= max(2, 0.3 * len(unseen_heldout))


def test_transformers_loads_an_agent_with_the_same_logits(reduced_pool):
    import torch
    from transformers import AutoModelForCausalLM

    from disrouter_jax.models import qwen2

    agent = reduced_pool.agents[-1]
    tokenizer = load_tokenizer(agent.path)
    question = reduced_pool.world().queries_for(HELDOUT, SKILL)[0].question
    ids = tokenizer.apply_chat_template(plain_messages(question), tokenize=False, add_generation_prompt=True)
    ids = tokenizer(ids, add_special_tokens=False)["input_ids"]
    ours = np.asarray(qwen2.from_pretrained(agent.path)(np.asarray([ids], np.int32)))
    reference = AutoModelForCausalLM.from_pretrained(agent.path, local_files_only=True).eval()
    with torch.no_grad():
        theirs = reference(torch.tensor([ids])).logits.numpy()
    assert type(reference).__name__ == "Qwen2ForCausalLM"
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_agent_tokenizer_and_generation_config_load_with_transformers(reduced_pool):
    from transformers import AutoTokenizer, GenerationConfig

    agent = reduced_pool.agents[0]
    tokenizer = AutoTokenizer.from_pretrained(agent.path, local_files_only=True)
    reference = load_tokenizer(reduced_pool.tokenizer_dir)
    messages = plain_messages("Count the letters: a b c")
    assert tokenizer.apply_chat_template(messages, tokenize=False) == reference.apply_chat_template(messages, tokenize=False)
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == PAD_TOKEN
    generation = GenerationConfig.from_pretrained(agent.path, local_files_only=True)
    assert tokenizer.convert_tokens_to_ids(IM_END) in generation.eos_token_id
    config = json.loads((agent.path / "config.json").read_text())
    assert config["eos_token_id"] == tokenizer.convert_tokens_to_ids(IM_END)
    assert config["vocab_size"] == len(tokenizer)


# ------------------------------------------------------------------------------------ caching


def test_second_build_reuses_a_complete_pool(reduced_pool, count_pretraining):
    before = _mtimes(reduced_pool)
    manifest = (reduced_pool.root / POOL_FILE).read_text()
    again = build_pool(reduced_pool.root, PoolConfig.reduced(), progress=False)
    assert count_pretraining == []
    assert _mtimes(again) == before
    assert (reduced_pool.root / POOL_FILE).read_text() == manifest
    assert again == reduced_pool


def test_partial_pool_rebuilds_only_the_missing_agent_identically(reduced_pool, partial_rebuild):
    """`python -m disrouter_jax.toy build` on a copy of the pool without its smallest agent (run
    in the background: the `partial_rebuild` fixture)."""
    root, victim_name, missing, survivors, log = partial_rebuild
    victim = reduced_pool.agent(victim_name)
    assert victim == reduced_pool.agents[0]
    assert victim.name in missing  # the incomplete pool did not load
    assert re.findall(r"agent (\S+): building", log) == [victim.name]
    rebuilt = load_pool(root)
    after = {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted((root / "agents").rglob("*"))
             if p.is_file() and p.relative_to(root / "agents").parts[0] != victim.name}
    assert after == survivors and survivors
    # Same seed, same bytes: the rebuilt agent is the agent that was deleted.
    assert (rebuilt.agent(victim.name).path / "model.safetensors").read_bytes() == \
        (victim.path / "model.safetensors").read_bytes()
    record = json.loads((rebuilt.agent(victim.name).path / AGENT_RECORD_FILE).read_text())
    assert record["heldout_correct_ids"] == json.loads((victim.path / AGENT_RECORD_FILE).read_text())["heldout_correct_ids"]
    assert not [p for p in (root / "agents").iterdir() if p.name.startswith(".tmp")]
    assert [a.name for a in rebuilt.agents] == [a.name for a in reduced_pool.agents]


def test_a_pool_without_manifest_is_completed_from_its_agents(reduced_pool, tmp_path, count_pretraining):
    root = _copy_pool(reduced_pool, tmp_path)
    (root / POOL_FILE).unlink()
    rebuilt = build_pool(root, PoolConfig.reduced(), progress=False)
    assert count_pretraining == []
    assert rebuilt.agents == tuple(dataclasses.replace(a, path=root / a.path.relative_to(reduced_pool.root))
                                   for a in reduced_pool.agents)


def test_a_different_config_is_never_silently_overwritten(reduced_pool, tmp_path, count_pretraining):
    root = _copy_pool(reduced_pool, tmp_path)
    with pytest.raises(PoolError, match="overwrite"):
        build_pool(root, PoolConfig.reduced(seed=1), progress=False)
    (root / POOL_FILE).unlink()  # agents alone are protected too
    with pytest.raises(PoolError, match="overwrite"):
        build_pool(root, PoolConfig.reduced(seed=1), progress=False)
    assert count_pretraining == []


def test_recosting_reuses_every_agent(reduced_pool, tmp_path, count_pretraining):
    root = _copy_pool(reduced_pool, tmp_path)
    config = dataclasses.replace(PoolConfig.reduced(), costs=(0.2, 0.4, 0.6))
    pool = build_pool(root, config, progress=False, overwrite=True)
    assert count_pretraining == []
    assert pool.costs == (0.2, 0.4, 0.6)


def test_load_pool_errors_name_the_missing_file(tmp_path, reduced_pool):
    with pytest.raises(FileNotFoundError, match="pool.json"):
        load_pool(tmp_path / "nowhere")
    root = _copy_pool(reduced_pool, tmp_path)
    (root / "agents" / reduced_pool.agents[0].name / "model.safetensors").unlink()
    with pytest.raises(PoolError, match=rf"{reduced_pool.agents[0].name}.*model.safetensors"):
        load_pool(root)
    (root / POOL_FILE).write_text("{not json")
    with pytest.raises(PoolError, match="pool.json: not valid JSON"):
        load_pool(root)


def test_cli_build_reuses_the_pool_and_prints_the_table(reduced_pool, capsys, count_pretraining):
    assert cli_main(["build", "--out", str(reduced_pool.root), "--reduced", "--quiet"]) == 0
    assert count_pretraining == []
    printed = capsys.readouterr().out
    for agent in reduced_pool.agents:
        assert any(line.startswith(agent.name) and f"{agent.cost:.2f}" in line for line in printed.splitlines())
    assert "heldout knowledge" in printed and "heldout skill" in printed
    assert cli_main(["show", "--out", str(reduced_pool.root)]) == 0
    assert capsys.readouterr().out.strip() == reduced_pool.table()


def test_cli_reports_a_missing_pool(tmp_path, capsys):
    assert cli_main(["show", "--out", str(tmp_path)]) == 1
    assert "pool.json" in capsys.readouterr().err


def test_cli_runs_as_a_module(reduced_pool):
    """`python -m disrouter_jax.toy` (its `__main__` block, which the tests above bypass)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "disrouter_jax.toy", "show", "--out", str(reduced_pool.root)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == reduced_pool.table()
