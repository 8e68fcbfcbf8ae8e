"""The plan (disrouter_jax/plan.py): bytes per device from shapes only, checked against a hand
computation; every named failure (checkpoint, data set, tokenizer, memory); the plan command."""

import sys

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from flax import nnx

from disrouter_jax import plan, plan_memory, preflight, train
from disrouter_jax.agents import AgentSpec
from disrouter_jax.models.decoder import Decoder
from disrouter_jax.models.families import Qwen2Config, Qwen3Config
from disrouter_jax.models.releases import RELEASED_CONFIGS, released_config
from tests.conftest import load_config_module
from tests.paper_setup import as_flags, overrides, paper_config
from disrouter_jax.training.sft import TokenBatch, sft_loss
from tests.qwen25_pool import copy_without_chat_template

# One layer, 2 query heads over 1 KV head of 8 dims, tied embeddings.
TINY = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                   num_kv_heads=1, head_dim=8, tie_word_embeddings=True)
MESH = {"data": 1, "fsdp": 2, "tensor": 1}
# Two tasks keep the data checks fast; the plan reads every configured task the same way.
FEW_TASKS = {"data.train_tasks": ("gsm8k",), "data.eval_tasks": ("gsm8k",), "data.out_of_domain": ("squad",)}


def test_bytes_per_device_match_a_hand_computation():
    config = load_config_module("common.py").get_base_config("paper")  # bfloat16 compute, float32 params
    config.sft.batch_size, config.sft.length_buckets = 4, (64,)
    config.label.batch_size, config.label.num_samples, config.label.max_new_tokens = 2, 2, 8
    stages = {s.stage: s.parts for s in plan_memory.agent_stage_memory(config, TINY, MESH, "cpu", trained=True)}
    # Float32 parameters; "embed" dims split over fsdp=2, everything else whole (tensor=1):
    # embedding 64*16/2, final norm 16, layer norms 2*16, q 16*2*8/2 + bias 2*8, k and v 16*8/2 + bias 8
    # each, o 2*8*16/2, gate / up / down 16*32/2 each.
    params = 4 * (512 + 16 + 32 + (128 + 16) + 2 * (64 + 8) + 128 + 3 * 256)
    assert params == 6976 and stages["sft"]["params"] == params and stages["sft"]["grads"] == params
    # Adam's mu and nu like the parameters, plus three int32 counters (optimizer, Adam, schedule).
    assert stages["sft"]["optimizer"] == 2 * params + 3 * 4
    # 4 rows over data*fsdp=2 -> 2 per device, T=64, bfloat16 (c=2) on CPU, where XLA keeps float32
    # copies (w=4). Per layer: D terms (4*4 + 2*2)*16 = 320, q/k/v/attention output 2*4*(2+1)*8 = 192,
    # MLP (4 + 4*2)*32 = 384, row statistics 8*(2+1) = 24, unfused scores (4 + 4 + 4)*2*64 = 1536:
    # 2456. Once per token: (4*4 + 2)*16 = 288, logits (4 + 4 + 2)*64 = 640, one layer's score
    # gradients 8*2*64 = 1024: 1952.
    assert stages["sft"]["activations"] == 2 * 64 * (2456 + 1952) == 564_224
    # Labelling: 2 queries x 2 samples over 2 devices; 64 + 16 slots (the 8 new tokens' bucket);
    # keys and values of 1 layer, 1 KV head, 8 dims, in bfloat16.
    assert stages["label"] == {"params": params, "kv_cache": 2 * (64 + 16) * 2 * 1 * 1 * 8 * 2}
    # RL alternates rollouts (KV cache) and updates (gradients + activations) over the same state.
    assert set(stages) == {"label", "sft", "rl rollouts", "rl update", "assess"}
    assert stages["rl rollouts"]["optimizer"] == stages["rl update"]["optimizer"] == 2 * params + 12
    # An RL update forwards its 16 prompts x 8 samples and its 16 replay rows (rl.replay_rows) in the
    # same micro-batch: 64 + 8 rows per device, each as an SFT row.
    assert stages["rl update"]["activations"] == (128 // 2 + 16 // 2) * 64 * (2456 + 1952)


def test_fused_attention_tensor_split_and_gradient_accumulation():
    config = load_config_module("common.py").get_base_config("paper")
    config.sft.batch_size, config.sft.length_buckets, config.sft.grad_accum = 8, (64,), 2
    mesh = {"data": 1, "fsdp": 2, "tensor": 2}
    stage = next(s for s in plan_memory.agent_stage_memory(config, TINY, mesh, "gpu", trained=True) if s.stage == "sft")
    # 8 rows / 2 micro-batches / 2 data shards = 2 rows; on a GPU in bfloat16 (c = w = 2) attention
    # is fused (no T^2 scores or their gradients); the query heads (2 -> 1), MLP (32 -> 16) and
    # vocabulary (64 -> 32) split over tensor=2, the one KV head stays whole. Per layer:
    # (4*2 + 2*2)*16 = 192, 2*2*(1+1)*8 = 64, (2 + 2*2)*16 = 96, 8*(1+1) = 16: 368. Once per token:
    # (4*2 + 2)*16 = 160, (4 + 2 + 2)*32 = 256: 416.
    assert stage.parts["activations"] == 2 * 64 * (368 + 416) == 100_352
    # Micro-batches add float32 gradient accumulators next to the (here float32) gradients.
    grads = plan_memory.shard_bytes(plan_memory.abstract_train_state(config, TINY, "sft").params, mesh)
    assert (stage.parts["grads"], stage.parts["accumulators"]) == (grads, grads)


# Tiny shapes whose activations dwarf the weights: Qwen2 (q/k/v biases, a KV head per 2 query
# heads) in one layer, and Qwen3 (q/k norms, a KV head per 4 query heads, where XLA:CPU also keeps a
# broadcast softmax denominator) in two.
MEASURED_SHAPES = {
    "qwen2": (Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4,
                          num_kv_heads=2, head_dim=16, tie_word_embeddings=True), 4, 128),
    "qwen3": (Qwen3Config(vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=8,
                          num_kv_heads=2, head_dim=16, tie_word_embeddings=True), 4, 128),
}


def _sft_backward_temp_bytes(mc, dtype, rows: int, length: int) -> int:
    """XLA's own count of what the compiled SFT backward keeps beside its inputs and outputs
    (compiled from shapes only: nothing is allocated or run)."""
    graphdef, params = nnx.split(nnx.eval_shape(
        lambda: Decoder(mc, dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(0))))

    def loss(params, batch):
        return sft_loss(nnx.merge(graphdef, params), batch)[0]

    ids = jax.ShapeDtypeStruct((rows, length), jnp.int32)
    batch = TokenBatch(ids, ids, jax.ShapeDtypeStruct((rows, length), jnp.float32))
    return jax.jit(jax.grad(loss)).lower(params, batch).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", sorted(MEASURED_SHAPES))
def test_activation_estimate_bounds_what_xla_keeps_for_backprop(shape, dtype):
    """The plan's activations are an upper estimate of XLA's temp bytes for the backward pass on
    CPU, and a close one (1.13-1.45x here when written; the formula of the first plan was
    0.61-0.83x). Temp bytes also hold small weight-sized buffers, which the tiny shapes keep small."""
    if jax.default_backend() != "cpu":
        pytest.skip("the formula's XLA:CPU terms are what this checks")
    mc, rows, length = MEASURED_SHAPES[shape]
    measured = _sft_backward_temp_bytes(mc, dtype, rows, length)
    estimate = plan_memory.activation_bytes(mc, rows=rows, length=length, itemsize=jnp.dtype(dtype).itemsize,
                                            fused_attention=False, platform="cpu")
    assert measured <= estimate <= 1.6 * measured, (measured, estimate, estimate / measured)


def test_released_qwen25_configs_give_the_launch_readme_counts():
    counts = {hub_id: round(released_config(hub_id).num_params / 1e6, 1) for hub_id in RELEASED_CONFIGS}
    assert counts == {"Qwen/Qwen2.5-0.5B-Instruct": 494.0, "Qwen/Qwen2.5-1.5B-Instruct": 1543.7,
                      "Qwen/Qwen2.5-3B-Instruct": 3085.9, "Qwen/Qwen2.5-7B-Instruct": 7615.6,
                      "Qwen/Qwen2.5-14B-Instruct": 14770.0}


def _config(qwen25_pool, shared_data, extra=None):
    return paper_config("rl_alpha05.py", overrides(qwen25_pool, shared_data, extra={**FEW_TASKS, **(extra or {})}))


def test_a_sound_setup_plans_without_problems(qwen25_pool, shared_data, tmp_path):
    config = _config(qwen25_pool, shared_data, {"plan.num_devices": 8, "plan.platform": "gpu",
                                                "plan.device_memory_gib": 80.0})
    made = plan.make_plan(config, tmp_path)
    assert made.problems == ()
    assert made.target.mesh == {"data": 1, "fsdp": 8, "tensor": 1}
    assert [a.check.spec.name for a in made.agents] == [a["name"] for a in qwen25_pool]
    assert [a.trained for a in made.agents] == [True] * 4 + [False]
    assert all(a.check.shapes_from == "checkpoint" and a.peak for a in made.agents[:4])
    work = {w.stage: w for w in made.work}
    # 2 gsm8k rows of its test split (the one rows_held_out row stays for evaluation) x 2 samples.
    assert (work["label"].generations, work["sft"].steps, work["rl"].rows) == (4, 1, 8)
    assert {(t.name, t.role, t.split) for t in made.tasks} == {
        ("gsm8k", "train", "test"), ("gsm8k", "eval", "test"), ("squad", "eval", "validation")}
    text = plan.format_plan(made, config, "rl_alpha05.py")
    assert "8 gpu devices, 80.0 GiB each; mesh data=1 fsdp=8 tensor=1" in text and "problems: none" in text


def test_each_input_failure_is_named(qwen25_pool, shared_data, tmp_path):
    no_template = copy_without_chat_template(qwen25_pool[1]["path"], tmp_path / "no_template")
    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)  # no file of any split
    (data / "squad").symlink_to(shared_data / "squad")
    pool = [{"name": "missing", "path": str(tmp_path / "nowhere"), "cost": 0.1},
            {"name": "templateless", "path": str(no_template), "cost": 0.5}, qwen25_pool[-1]]
    config = paper_config("rl_alpha05.py", overrides(pool, data, extra=FEW_TASKS))
    problems = {(p.kind, p.where): p.message for p in plan.make_plan(config, tmp_path).problems}
    assert str(tmp_path / "nowhere") in problems["checkpoint", "missing"]
    assert "no chat template" in problems["tokenizer", "templateless"]
    assert "gsm8k: no files for split 'train'" in problems["dataset", "gsm8k (train)"]
    assert "config.data.train_splits=('train', 'validation', 'test')" in problems["dataset", "gsm8k (train)"]
    assert set(problems) == {("checkpoint", "missing"), ("tokenizer", "templateless"),
                             ("dataset", "gsm8k (train)"), ("dataset", "gsm8k (eval)")}


def test_training_on_evaluated_rows_needs_rows_to_hold_out(qwen25_pool, shared_data, tmp_path):
    # gsm8k trains on its test split (the sample has no other), which evaluation reads whole at 0.
    config = _config(qwen25_pool, shared_data, {"data.eval_per_task": 0})
    [problem] = plan.make_plan(config, tmp_path).problems
    assert (problem.kind, problem.where) == ("dataset", "gsm8k (train)")
    assert "config.data.eval_per_task and config.assess.per_task must be > 0" in problem.message


def test_a_hub_id_offline_is_named_and_still_sized_from_the_release():
    check = preflight.check_agent(AgentSpec("small", "Qwen/Qwen2.5-0.5B-Instruct", 0.1))  # HF_HUB_OFFLINE=1
    assert check.model_config == released_config("Qwen/Qwen2.5-0.5B-Instruct")
    assert check.shapes_from == "released config.json (built in)"
    [problem] = check.problems
    assert problem.kind == "checkpoint" and "huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct" in problem.message


def test_memory_over_the_device_is_named_with_what_fits(qwen25_pool, shared_data, tmp_path):
    config = _config(qwen25_pool, shared_data, {"plan.device_memory_gib": 12 / 2**20})  # 12 KiB
    problems = [p for p in plan.make_plan(config, tmp_path).problems if p.kind == "memory"]
    assert {p.where for p in problems} == {a["name"] for a in qwen25_pool[:4]}
    assert any("rl update needs" in p.message and "over the 0.0 GiB of a device" in p.message for p in problems)
    assert all("grad_accum" in p.message or "shard wider" in p.message for p in problems)


def _parse_train(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads --config.* overrides from sys.argv
    flag_values = train.define_flags(flags.FlagValues())
    flag_values(argv)
    return flag_values


def test_plan_only_prints_the_plan_and_writes_nothing(qwen25_pool, shared_data, tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "work"
    values = overrides(qwen25_pool, shared_data, extra={**FEW_TASKS, "plan_only": True, "plan.num_devices": 8})
    argv = ["train", "--config=configs/rl_alpha05.py", f"--workdir={workdir}", *as_flags(values)]
    assert train.run_cli(_parse_train(argv, monkeypatch)) is None
    out = capsys.readouterr().out
    assert "plan for configs/rl_alpha05.py: 8 cpu devices, memory unknown (not checked); mesh data=1 fsdp=8" in out
    assert all(a["name"] in out for a in qwen25_pool) and "rl update" in out and "problems: none" in out
    assert not workdir.exists()
    # With a problem: the plan is still printed, then one error line and exit status 2.
    values["data.train_splits"] = ("train",)  # the sample has no gsm8k train split
    argv = ["train", "--config=configs/rl_alpha05.py", f"--workdir={workdir}", *as_flags(values)]
    with pytest.raises(SystemExit) as exit_info:
        train.run_cli(_parse_train(argv, monkeypatch))
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and "dataset gsm8k (train)" in captured.out
    assert captured.err.strip().splitlines() == ["error: the plan found 1 problem(s), listed above"]


def test_a_row_that_does_not_parse_is_counted_not_fatal(qwen25_pool, shared_data, tmp_path):
    """Loaders skip a bad row and log it (one broken line never stops a long run); the plan
    shows how many were skipped and why. A whole file that does not parse is a problem
    (tests/test_cli_errors.py)."""
    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()
    (data / "gsm8k" / "test.jsonl").write_text("\n".join(lines[:5] + ['{"question": "cut'] + lines[5:10]) + "\n")
    (data / "squad").symlink_to(shared_data / "squad")
    made = plan.make_plan(paper_config("rl_alpha05.py", overrides(qwen25_pool, data, extra=FEW_TASKS)), tmp_path)
    assert made.problems == ()
    gsm8k = [t for t in made.tasks if t.name == "gsm8k"]
    assert [(t.rows, t.skipped) for t in gsm8k] == [(10, {"invalid JSON": 1})] * 2


def test_over_budget_names_the_smallest_gradient_accumulation_that_fits():
    config = load_config_module("common.py").get_base_config("paper")
    config.sft.batch_size, config.sft.length_buckets = 8, (64,)
    sft = next(s for s in plan_memory.agent_stage_memory(config, TINY, MESH, "cpu", trained=True) if s.stage == "sft")
    # Two micro-batches: half the activations, plus float32 accumulators as large as the gradients.
    budget = sft.total - sft.parts["activations"] // 2 + sft.parts["grads"]
    agent = plan.AgentPlan(preflight.AgentCheck(AgentSpec("tiny", "-", 0.1), TINY, "checkpoint", ()), True, (sft,))
    target = plan.Target(2, "cpu", budget, MESH)
    assert plan.over_budget(config, target, agent, sft).endswith(f"--config.sft.grad_accum=2 fits ({budget / 2**30:.1f} GiB)")
    target = plan.Target(2, "cpu", budget - 1, MESH)
    assert "--config.sft.grad_accum=4 fits" in plan.over_budget(config, target, agent, sft)
