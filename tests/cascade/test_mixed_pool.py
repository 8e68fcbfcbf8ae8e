"""A pool that mixes model families and tokenizers: Qwen2 with a ChatML tokenizer, Qwen3 with a
ChatML tokenizer of other ids and header, Llama with a Llama-3-style tokenizer and template.

Each agent renders prompts with its own template and tokenizer and its refusal is detected with
its own tokenizer (5, 5 and 3 tokens); the cascade routes as scripted and names each agent's
family in the routing log and report; an SFT step (LoRA on family-named targets) runs on every agent and an RL step on the Llama one, and each trained agent
exports as its family.
"""

import numpy as np
import pytest
from flax import nnx
from transformers import AutoModelForCausalLM

from disrouter_jax.agents import AgentSpec, load_agent
from disrouter_jax.cascade import engine, log, report
from disrouter_jax.models import hf_io
from disrouter_jax.selfaware.data import LabelRecord
from disrouter_jax.tasks.prompts import REFUSAL
from disrouter_jax.training.lora import LoRAConfig, LoRAParam, apply_lora, merge_lora
from disrouter_jax.training.optim import OptimConfig
from disrouter_jax.training.rl import make_rl_step, rl_batch_from_rollouts
from disrouter_jax.training.sft import make_sft_step, sequence_logprobs
from disrouter_jax.training.sft_stage import build_sft_data, sft_batch_fn
from disrouter_jax.training.state import create_train_state
from tests.cascade import scripted_agents as sa

POOL = (("qwen2", sa.CHATML), ("qwen3", sa.QWEN3), ("llama", sa.LLAMA3))
COSTS = (0.1, 0.5, 0.9)
QUERIES = [(0, "7"), (1, "42"), (2, "42"), (3, "42"), (1, "5")]
OPTIM = OptimConfig(learning_rate=1e-2, total_steps=10, decay="constant", eps=1e-3)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed_pool")
    return [load_agent(AgentSpec(f"{family}-{level}", str(sa.build_agent_checkpoint(
                root / family, level, seed=level, family=family, dialect=dialect)), COSTS[level]))
            for level, (family, dialect) in enumerate(POOL)]


def queries():
    return [engine.Query(example) for example in sa.make_queries(QUERIES)]


def test_each_agent_renders_and_reads_with_its_own_tokenizer(pool):
    assert [a.family for a in pool] == ["qwen2", "qwen3", "llama"]
    example = sa.make_queries(QUERIES)[:1][0]
    rendered = [a.tokenizer.decode(a.prompt_ids(example, 0.5)) for a in pool]
    assert rendered[0] == f"Question: {example.question}"  # the ChatML dialect has no header
    assert rendered[1].startswith("<|im_start|>user\n") and rendered[2].startswith("<|begin_of_text|>")
    refusals = [engine.refusal_token_ids(a) for a in pool]
    assert [len(r) for r in refusals] == [5, 5, 3] and len(set(refusals)) == 3
    assert all(a.decode(r) == REFUSAL for a, r in zip(pool, refusals))
    # Another agent's ids are not the refusal for this one: detection must use the agent's own.
    assert pool[2].decode(refusals[0]) != REFUSAL and pool[0].decode(refusals[2]) != REFUSAL
    assert [len(a.stop_token_ids) for a in pool] == [2, 2, 1]  # ChatML's two ends; Llama's <|eot_id|>


def test_the_mixed_cascade_routes_detects_refusals_and_names_families(pool, tmp_path):
    run = engine.Cascade(pool, engine.EngineConfig(max_new_tokens=10, max_batch_size=2)).run(queries(), alpha=0.5)
    families = {a.name: a.family for a in pool}
    for record, (level, gold) in zip(run.records, QUERIES):
        assert [v.decision for v in record.visited] == sa.expected_route(level, (0, 1, 2))
        assert all(v.family == families[v.agent] for v in record.visited)
        final = len(record.visited) - 1
        assert record.correct == (record.visited[-1].decision == "answer" and gold == sa.ANSWERS[final])
    for agent, stats in zip(pool, run.stats([a.name for a in pool]).values()):
        # Scripted agents ramble after refusing; only their own refusal sequence stops them.
        if stats["refused"]:
            assert stats["early_stopped_refusals"] == stats["refused"]
            assert stats["tokens_per_refusal"] == len(engine.refusal_token_ids(agent))
    assert sum(s["refused"] for s in run.stats([a.name for a in pool]).values()) >= 4

    path = tmp_path / report.ROUTING_LOG_FILE
    log.write_routing_log(path, run.records)
    read = log.read_routing_log(path)
    assert read == list(run.records)  # the same routing; families compared on their own:
    assert [[v.family for v in r.visited] for r in read] == [[families[v.agent] for v in r.visited] for r in read]
    built = report.build_report(read, [a.name for a in pool], dict(zip(families, COSTS)))
    assert built["families"] == families
    assert report.format_summary_table(built).splitlines()[0] == "pool: qwen2-0 (qwen2), qwen3-1 (qwen3), llama-2 (llama)"


def lora_state(agent):
    """LoRA on targets named as the family's HF modules, on a fresh copy of its weights."""
    base = hf_io.from_pretrained(agent.spec.path)
    model = apply_lora(base, LoRAConfig(rank=2, targets=("q_proj", "v_proj", "down_proj")))
    return create_train_state(model, OPTIM, wrt=LoRAParam)


def exports_as_its_family(state, agent, out_dir) -> bool:
    out = hf_io.save_pretrained(merge_lora(state.model()), out_dir)
    return type(AutoModelForCausalLM.from_pretrained(out)).__name__ == agent.model.config.architecture


@pytest.mark.parametrize("k", range(len(POOL)))
def test_an_sft_step_trains_every_family_and_it_exports_as_that_family(pool, tmp_path, k):
    agent = pool[k]
    examples = sa.make_queries(QUERIES)
    records = [LabelRecord(agent=agent.name, task=e.task, query_id=e.id, p_correct=p, num_samples=4,
                           correct_response=sa.ANSWERS[k] if p else None, prompt_question=e.question, gold=e.gold)
               for e, p in zip(examples, (1.0, 0.75, 0.25, 0.0, 0.5))]
    data = build_sft_data(agent, records, alphas=(0.5,), num_examples=4, balance=None, max_len=64, seed=0)
    batch, _ = sft_batch_fn(data, batch_size=4, length_buckets=(32,), pad_id=agent.tokenizer.pad_token_id, seed=0)(0, None)
    state, metrics = make_sft_step(OPTIM)(lora_state(agent), batch)
    assert float(metrics["update_applied"]) == 1.0 and np.isfinite(float(metrics["loss"]))
    assert exports_as_its_family(state, agent, tmp_path / "trained")


def test_an_rl_step_on_the_llama_agent(pool, tmp_path):
    """Its own prompts and tokens: the answer it cannot give penalised, its refusal rewarded."""
    agent = pool[2]
    examples = sa.make_queries(QUERIES)[2:4]
    eos = agent.tokenizer.eos_token_id
    responses = [agent.encode_response(sa.ANSWERS[2]) + [eos], agent.encode_response(REFUSAL) + [eos]]
    batch = rl_batch_from_rollouts([agent.prompt_ids(e, 0.5) for e in examples], responses,
                                   [[0.0] * len(r) for r in responses], [-1.0, 1.0],
                                   pad_id=agent.tokenizer.pad_token_id, length_buckets=(32,))
    state = lora_state(agent)
    old = np.asarray(sequence_logprobs(merge_lora(state.model()), batch))
    state, metrics = make_rl_step(OPTIM)(state, batch.replace(old_logprobs_bt=old))
    assert float(metrics["update_applied"]) == 1.0 and abs(float(metrics["ratio_mean"]) - 1.0) < 1e-5
    assert exports_as_its_family(state, agent, tmp_path / "trained")
