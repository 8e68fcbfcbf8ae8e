"""The paper setup end to end, as a user runs it:

    python -m disrouter_jax.train --config configs/rl_alpha05.py ...
    python -m disrouter_jax.evaluate --config configs/eval_cascade.py ...

with only the overrides of tests/paper_setup.py: five tiny Qwen2.5-architecture agents with
Qwen2.5's template and special tokens (tests/qwen25_pool.py), ``data.dir=../shared/data`` (the
seven in-domain and three out-of-domain data sets in their release formats), the splits the
sample has, and small counts. bfloat16 compute, as the paper config sets it. Each command is its own
process on one CPU device (a user's host; the session's eight simulated devices are for the mesh
tests); they share a persistent compilation cache, so the evaluation reuses what training compiled.

Every agent replies one fixed text (the first refuses, the others answer a letter), so each
artefact has an exact expected content: labels, SFT targets, rewards, routes and figures follow
from which gold answers are that letter. That checks the plumbing, not any accuracy.
"""

import json

import jax
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from disrouter_jax import pipeline, task_data
from disrouter_jax.agents import AgentSpec, load_agent
from disrouter_jax.cascade import log, report
from disrouter_jax.cascade.queries import evaluation_queries
from disrouter_jax.selfaware.data import read_labels_jsonl
from disrouter_jax.tasks.prompts import REFUSAL
from disrouter_jax.tasks.registry import IN_DOMAIN, OUT_OF_DOMAIN
from disrouter_jax.training.checkpoint import TrainCheckpointer
from tests.paper_setup import COMMANDS, overrides, paper_config
from tests.qwen25_pool import POOL, QWEN2_5_CHAT_TEMPLATE

REPLIES = {name: reply for name, _, reply in POOL}
TRAINED = [name for name, _, _ in POOL[:-1]]  # the last agent always answers and is not trained
ALPHA = 0.5  # rl_alpha05: labelling, SFT and RL at one scenario


@pytest.fixture(scope="module")
def paper_run(background, qwen25_pool, shared_data):
    """The two commands, run from the session's start in the background (tests/conftest.py,
    tests/paper_setup.py: run_commands), and the configs they ran, built in this process."""
    workdir, done = background.wait("paper_run")
    for command, _ in COMMANDS:
        assert command in done, f"{command} did not run"
        code, _, err = done[command]
        assert code == 0, f"{command} failed:\n{err[-6000:]}"
    out = {command: stdout for command, (_, stdout, _) in done.items()}
    train_config = paper_config("rl_alpha05.py", overrides(qwen25_pool, shared_data))
    eval_config = paper_config("eval_cascade.py", overrides(qwen25_pool, shared_data, evaluation=True))
    return workdir, out, train_config, eval_config


def expected_correct(example, reply: str) -> bool:
    """What a checker makes of an agent that always replies ``reply``."""
    return example.answer_type == "choice" and example.gold == reply


def test_the_commands_report_what_they_did(paper_run, qwen25_pool):
    workdir, out, _, _ = paper_run
    for name in TRAINED:
        assert f"{name:24s} cost=" in out["train"] and str(pipeline.final_dir(workdir, name)) in out["train"]
    assert qwen25_pool[-1]["path"] in out["train"]
    assert f"report: {workdir / report.REPORT_FILE}" in out["evaluate"] and "[out_of_domain] alpha = 0.8" in out["evaluate"]


def test_labels_hold_p_of_x_from_each_agents_own_samples(paper_run):
    workdir, _, config, _ = paper_run
    examples = {e.key: e for e in task_data.training_examples(config, workdir)}
    assert {e.task for e in examples.values()} == set(IN_DOMAIN) and len(examples) == 2 * len(IN_DOMAIN)
    for name in TRAINED:
        records = read_labels_jsonl(workdir / "agents" / name / "labels" / "labels.jsonl")
        assert sorted(f"{r.task}/{r.query_id}" for r in records) == sorted(examples)
        for r in records:
            example = examples[f"{r.task}/{r.query_id}"]
            correct = expected_correct(example, REPLIES[name])
            assert (r.num_samples, r.p_correct) == (2, float(correct)), (name, r)
            assert r.correct_response == (REPLIES[name] if correct else None)
            assert r.meta["refusals"] == (2 if REPLIES[name] == REFUSAL else 0)


def test_sft_targets_are_balanced_50_50_at_delta_one_minus_alpha(paper_run):
    workdir, _, _, _ = paper_run
    balanced = 0
    for name in TRAINED:
        labels = read_labels_jsonl(workdir / "agents" / name / "labels" / "labels.jsonl")
        can_answer = sum(r.p_correct >= 1 - ALPHA for r in labels)
        targets = json.loads((workdir / "agents" / name / "sft" / pipeline.SFT_TARGETS_FILE).read_text())
        scenario = targets["alphas"]["0.5"]
        assert scenario["delta"] == 1 - ALPHA
        if 0 < can_answer < len(labels):  # both classes: the majority is cut to the minority's size
            kept = min(can_answer, len(labels) - can_answer)
            assert (scenario["answers"], scenario["refusals"], scenario["balanced"]) == (kept, kept, True)
            assert targets["replayed"] == 2 * kept  # replay_fraction 0.5: as many plain answers again
            balanced += 1
        else:  # one class only (the agent that always refuses): every label kept, not balanced
            assert (scenario["answers"], scenario["refusals"], scenario["balanced"]) == (can_answer, len(labels) - can_answer, False)
        assert targets["examples"] == scenario["answers"] + scenario["refusals"] + targets["replayed"]
    assert balanced >= 2


def test_rl_rewards_come_from_the_checkers(paper_run):
    workdir, _, config, _ = paper_run
    rows = config.rl.prompts_per_step * config.rl.group_size
    for name in TRAINED:
        [metrics] = [json.loads(line) for line in (workdir / "agents" / name / "rl" / "metrics.jsonl").open()]
        assert metrics["step"] == 1 and metrics["update_applied"] == 1.0
        if REPLIES[name] == REFUSAL:  # reward (1 - alpha)^gamma for every refusal
            assert metrics["refusal_rate"] == 1.0
            assert metrics["reward_mean"] == pytest.approx((1 - ALPHA) ** config.rl.gamma)
        else:  # +1 right, 0 wrong
            assert metrics["refusal_rate"] == 0.0 and metrics["reward_mean"] == pytest.approx(metrics["accuracy"])
            assert float(metrics["accuracy"] * rows).is_integer()


def test_orbax_checkpoints_restore_to_the_exported_weights(paper_run, qwen25_pool):
    workdir, _, config, _ = paper_run
    name = TRAINED[1]
    for stage, steps in (("sft", config.sft.steps), ("rl", config.rl.steps)):
        export = workdir / "agents" / name / stage / "export"
        agent = load_agent(AgentSpec(name, str(export), 0.3), dtype=config.dtype, param_dtype=config.param_dtype)
        template = pipeline.train_state_for(config, agent.model, pipeline.optim_config(config[stage], steps))
        checkpoints = TrainCheckpointer(workdir / "agents" / name / stage / "checkpoints")
        assert checkpoints.latest_step() == steps
        restored = checkpoints.restore(template)
        assert restored.step == steps
        for saved, exported in zip(jax.tree.leaves(restored.state.params), jax.tree.leaves(template.params)):
            np.testing.assert_array_equal(np.asarray(saved), np.asarray(exported))
        checkpoints.close()


def test_exported_agents_load_in_transformers_with_qwen25s_template(paper_run, qwen25_pool):
    workdir, _, _, _ = paper_run
    for name in TRAINED:
        final = pipeline.final_dir(workdir, name)
        tokenizer = AutoTokenizer.from_pretrained(final)
        assert tokenizer.chat_template == QWEN2_5_CHAT_TEMPLATE
        assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
        model = AutoModelForCausalLM.from_pretrained(final).eval()
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Question: 1 + 1?"}],
                                               add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**prompt, do_sample=False, max_new_tokens=8, eos_token_id=tokenizer.eos_token_id)
        reply = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
        assert reply == REPLIES[name]  # the trained weights, as transformers computes them


def _eval_queries(paper_run):
    workdir, _, _, config = paper_run
    return {q.key: q for q in evaluation_queries(config, workdir)}


def test_report_has_both_groups_and_one_row_per_dataset(paper_run):
    workdir, _, _, config = paper_run
    built = report.read_report(workdir / report.REPORT_FILE)
    datasets = [f"dataset:{name}" for name in sorted(IN_DOMAIN + OUT_OF_DOMAIN)]
    assert built["groups"] == ["all", "in_domain", "out_of_domain", *datasets]
    assert built["agents"] == [name for name, _, _ in POOL] and set(built["families"].values()) == {"qwen2"}
    assert {"disrouter", report.SFT_ONLY, "classifier_router", "frugalgpt", "smallest", "largest", "oracle"} <= set(
        built["methods"])
    queries = _eval_queries(paper_run).values()
    answerer = TRAINED[1]  # the first agent refuses everything, the second answers it
    for key in ("0.2", "0.5", "0.8"):
        results = built["results"][key]
        assert (results["in_domain"]["disrouter"]["n"], results["out_of_domain"]["disrouter"]["n"]) == (7, 3)
        assert all(results[d]["disrouter"]["n"] == 1 for d in datasets)
        expected = np.mean([expected_correct(q.example, REPLIES[answerer]) for q in queries])
        assert results["all"]["disrouter"]["accuracy"] == pytest.approx(expected)
        assert results["all"]["disrouter"]["mean_cost"] == pytest.approx(0.3)


def test_routing_log_has_every_route(paper_run):
    workdir, _, _, config = paper_run
    queries = _eval_queries(paper_run)
    records = log.read_routing_log(workdir / report.ROUTING_LOG_FILE)
    built = report.read_report(workdir / report.REPORT_FILE)
    assert len(records) == len(built["methods"]) * len(queries) * len(config.eval.alphas)
    cascade = [r for r in records if r.method == "disrouter"]
    assert {(r.dataset, r.query_id, r.alpha) for r in cascade} == {
        (*key, alpha) for key in queries for alpha in config.eval.alphas}
    refuser, answerer = TRAINED[0], TRAINED[1]
    for r in cascade:
        example = queries[(r.dataset, r.query_id)].example
        assert [(v.agent, v.decision) for v in r.visited] == [(refuser, "refuse"), (answerer, "answer")]
        assert (r.final_agent, r.response, r.cost) == (answerer, REPLIES[answerer], 0.3)
        assert r.correct == expected_correct(example, REPLIES[answerer])
        assert r.domain == ("out_of_domain" if r.dataset in OUT_OF_DOMAIN else "in_domain")
