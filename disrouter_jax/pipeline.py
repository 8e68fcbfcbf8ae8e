"""Config -> agents -> Self-Awareness Training, per agent and independently, under one workdir.

Workdir layout (everything a run writes)::

    <workdir>/pool/                      the toy pool (``:toy`` configs), built once and reused
    <workdir>/agents/<name>/labels/      stage 1: labels.jsonl
    <workdir>/agents/<name>/sft/         stage 2: checkpoints/, metrics.jsonl, tensorboard/, export/,
                                         assessment.json (self-assessment on held-out queries),
                                         targets.json (per α: δ, answer / refusal targets kept)
    <workdir>/agents/<name>/rl/          stage 3: the same, without targets.json
    <workdir>/agents/<name>/final/       the trained agent: a Hugging Face directory (LoRA merged)
    <workdir>/agents/assessment.txt      the per-agent table: refusal rate and self-assessment
                                         accuracy / F1 per scenario, after SFT and after RL

Each stage is skipped when its DONE marker exists and resumes from its last checkpoint otherwise,
so running the same command again continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import ml_collections

from disrouter_jax import agents as agents_lib
from disrouter_jax import sharding as sharding_lib
from disrouter_jax import storage
from disrouter_jax.agents import Agent, AgentSpec
from disrouter_jax.models import hf_io, qwen2
from disrouter_jax.selfaware import assessment as assessment_lib
from disrouter_jax.selfaware.labeling import LabelConfig, run_labelling
from disrouter_jax.task_data import heldout_examples, toy_pool_dir, training_examples
from disrouter_jax.training import loop as loop_lib
from disrouter_jax.training.lora import LoRAConfig, LoRAParam, apply_lora, merge_lora
from disrouter_jax.training.optim import OptimConfig
from disrouter_jax.training.rl import RLConfig, make_rl_step
from disrouter_jax.training.rl_stage import RolloutConfig, rl_batch_fn
from disrouter_jax.training.sft import make_sft_step
from disrouter_jax.training.sft_stage import build_sft_data, replay_examples, sft_batch_fn
from disrouter_jax.training.state import create_train_state

logger = logging.getLogger(__name__)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "config.json")
SFT_TARGETS_FILE = "targets.json"  # per α: δ, answer and refusal targets kept, balanced or not
POOL_BUILD_TIMEOUT_S = 3 * 3600  # the other processes wait this long for process 0 to pre-train the toy pool


# ------------------------------------------------------------------------------------ agents


def ensure_pool(config: ml_collections.ConfigDict, workdir: str | Path) -> list[AgentSpec]:
    """The agents in cascade order: the toy pool (built or reused) or the configured ones."""
    if config.pool.toy:
        from disrouter_jax.toy import pool as toy_pool
        from disrouter_jax.toy import tasks as _toy_tasks  # noqa: F401  (registers the toy tasks)

        make = toy_pool.PoolConfig.reduced if config.pool.reduced else toy_pool.PoolConfig.default
        pool_dir = toy_pool_dir(config, workdir)
        # Process 0 builds (or reuses) the pool; the others wait for it and read what it wrote.
        if storage.is_writer():
            pool = toy_pool.build_pool(pool_dir, make(seed=config.seed, mixed=config.pool.mixed),
                                       progress=config.progress)
        storage.barrier(f"toy-pool:{pool_dir}", timeout_s=POOL_BUILD_TIMEOUT_S)
        if not storage.is_writer():
            pool = toy_pool.load_pool(pool_dir)
        return [AgentSpec(a.name, str(a.path), a.cost) for a in pool.agents]
    if not config.pool.agents:
        raise ValueError("config.pool.agents is empty: list the agents (name, path, cost) in cascade order")
    return [AgentSpec.from_dict(a, where=f"config.pool.agents[{i}]") for i, a in enumerate(config.pool.agents)]


def agents_to_train(config, specs: list[AgentSpec]) -> list[AgentSpec]:
    return specs if config.pool.train_last_agent else specs[:-1]


def final_dir(workdir: str | Path, name: str) -> Path:
    return storage.join(workdir, "agents", name, "final")


def ensure_trained_pool(config, workdir: str | Path, mesh=None) -> list[AgentSpec]:
    """Runs (or reuses) Self-Awareness Training for every agent; specs point at trained exports.

    With ``config.assess.enabled`` each trained stage is also assessed on held-out queries and
    the table of every agent is logged and written to ``<workdir>/agents/assessment.txt``.
    """
    specs = ensure_pool(config, workdir)
    trained = {s.name for s in agents_to_train(config, specs)}
    out = []
    for spec in specs:
        if spec.name in trained:
            path = train_agent(config, spec, workdir, mesh=mesh)
            out.append(AgentSpec(spec.name, str(path), spec.cost, spec.devices, spec.mesh))
        else:
            out.append(spec)
    if config.assess.enabled and trained:
        write_assessment_table(config, [s for s in specs if s.name in trained], workdir)
    return out


# ---------------------------------------------------------------------------------- training


def optim_config(stage_cfg, total_steps: int) -> OptimConfig:
    return OptimConfig(
        learning_rate=stage_cfg.learning_rate,
        total_steps=total_steps,
        warmup_steps=min(stage_cfg.warmup_steps, max(total_steps - 1, 0)),
        weight_decay=stage_cfg.get("weight_decay", 0.0),
        max_grad_norm=stage_cfg.max_grad_norm,
        num_microbatches=stage_cfg.get("grad_accum", 1),
    )


def _loop_cfg(config, total_steps: int) -> loop_lib.LoopConfig:
    return loop_lib.LoopConfig(
        total_steps=total_steps,
        checkpoint_every=config.checkpoint.every_steps,
        max_to_keep=config.checkpoint.max_to_keep,
        log_every=config.log_every_steps,
        progress=config.progress,
    )


def train_state_for(config, model, optim: OptimConfig):
    """What a stage trains: every weight, or with ``lora.enabled`` LoRA adapters on
    ``lora.targets`` (merged on export). Also traced abstractly by the plan (``plan.py``)."""
    if not config.lora.enabled:
        return create_train_state(model, optim)
    model = apply_lora(model, LoRAConfig(rank=config.lora.rank, alpha=config.lora.alpha,
                                         targets=tuple(config.lora.targets)))
    return create_train_state(model, optim, wrt=LoRAParam)


def export_agent(model, source_dir: str | Path, out_dir: str | Path) -> Path:
    """Writes the trained weights (LoRA merged) plus the source's tokenizer/generation files.
    On an object store the directory is assembled locally and uploaded, config.json last (the
    completion marker every reader checks)."""
    out_dir = storage.path(out_dir)
    if storage.is_url(out_dir):
        with tempfile.TemporaryDirectory(prefix="disrouter-export-") as tmp:
            staged = _export_local(model, source_dir, Path(tmp) / out_dir.name, sync_name=str(out_dir))
            if storage.is_writer():
                storage.upload_tree(staged, out_dir, last=("config.json",))
        storage.barrier(f"export:{out_dir}")
        return out_dir
    _export_local(model, source_dir, out_dir)
    # The other processes load this export next (the RL stage, the final copy): wait for the rename.
    storage.barrier(f"export:{out_dir}")
    return out_dir


def _export_local(model, source_dir, out_dir: Path, sync_name: str | None = None) -> Path:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists() and storage.is_writer():
        shutil.rmtree(tmp)
    qwen2.save_pretrained(merge_lora(model), tmp, sync_name=sync_name)
    if storage.is_writer():
        for item in hf_io.resolve_checkpoint_dir(source_dir).iterdir():
            if item.is_file() and item.name not in WEIGHT_FILES and not item.name.endswith(".safetensors"):
                shutil.copy2(item, tmp / item.name)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    return out_dir


def train_agent(config, spec: AgentSpec, workdir: str | Path, mesh=None) -> Path:
    """Label -> SFT -> RL for one agent; returns the directory of the trained agent."""
    agent_dir = storage.join(workdir, "agents", spec.name)
    final = agent_dir / "final"
    if (final / "config.json").is_file():
        logger.info("%s: trained agent found at %s", spec.name, final)
        assess_stages(config, spec, workdir, mesh=mesh)
        return final
    load = lambda path=None: agents_lib.load_agent(  # noqa: E731
        spec, dtype=config.dtype, param_dtype=config.param_dtype, mesh=mesh, path=path)
    agent = load()
    examples = training_examples(config, workdir)
    current = storage.path(spec.path)

    rl_replay = "rl" in config.stages and config.rl.replay_coef > 0
    if "label" in config.stages or "sft" in config.stages or rl_replay:
        label_cfg = LabelConfig(
            num_samples=config.label.num_samples, temperature=config.label.temperature,
            top_p=config.label.top_p, max_new_tokens=config.label.max_new_tokens,
            batch_size=config.label.batch_size, chunk_size=config.label.chunk_size, seed=config.seed,
        )
        records = run_labelling(agent, examples, agent_dir / "labels", label_cfg, progress=config.progress)
        _write_label_summary(agent_dir / "labels", records)

    if "sft" in config.stages:
        sft_dir = agent_dir / "sft"
        if not loop_lib.is_done(sft_dir) or not (sft_dir / "export" / "config.json").is_file():
            data = build_sft_data(
                agent, records, alphas=tuple(config.alphas), num_examples=config.sft.num_examples,
                balance=config.sft.balance, balance_scope=config.sft.balance_scope,
                max_len=max(config.sft.length_buckets), seed=config.seed,
                replay_fraction=config.sft.replay_fraction,
            )
            logger.info("%s: %d SFT examples (%d replayed plain answers), %.0f%% answer targets", spec.name,
                        len(data.examples), data.num_replay, 100 * data.accept_fraction)
            if storage.is_writer():
                storage.write_text(sft_dir / SFT_TARGETS_FILE, json.dumps(data.summary(), indent=2) + "\n")
            optim = optim_config(config.sft, config.sft.steps)
            state = train_state_for(config, agent.model, optim)
            make_batch = sft_batch_fn(data, batch_size=config.sft.batch_size,
                                      length_buckets=tuple(config.sft.length_buckets),
                                      pad_id=_pad_id(agent), seed=config.seed)
            state = loop_lib.run_loop(f"{spec.name} sft", state, make_sft_step(optim), make_batch,
                                      sft_dir, _loop_cfg(config, config.sft.steps))
            export_agent(state.model(), spec.path, sft_dir / "export")
        current = sft_dir / "export"

    if "rl" in config.stages:
        rl_dir = agent_dir / "rl"
        if not loop_lib.is_done(rl_dir) or not (rl_dir / "export" / "config.json").is_file():
            agent = load(current)
            reference = None
            if config.rl.kl_coef > 0:
                reference = load(current).model
            replay = rl_replay_rows(config, agent, records) if rl_replay else ()
            rollout_cfg = RolloutConfig(
                prompts_per_step=config.rl.prompts_per_step, group_size=config.rl.group_size,
                alphas=tuple(config.alphas), gamma=config.rl.gamma, temperature=config.rl.temperature,
                max_new_tokens=config.rl.max_new_tokens,
                normalize_advantages=config.rl.normalize_advantages,
                length_buckets=tuple(config.sft.length_buckets), seed=config.seed,
                replay_rows=config.rl.replay_rows if replay else 0,
            )
            optim = optim_config(config.rl, config.rl.steps)
            state = train_state_for(config, agent.model, optim)
            make_batch = rl_batch_fn(agent, examples, rollout_cfg, pad_id=_pad_id(agent),
                                     reference_model=reference, replay=replay)
            step = make_rl_step(optim, RLConfig(clip_eps=config.rl.clip_eps, kl_coef=config.rl.kl_coef,
                                                replay_coef=config.rl.replay_coef if replay else 0.0))
            state = loop_lib.run_loop(f"{spec.name} rl", state, step, make_batch, rl_dir,
                                      _loop_cfg(config, config.rl.steps))
            export_agent(state.model(), spec.path, rl_dir / "export")
        current = rl_dir / "export"

    if str(current) == str(storage.path(spec.path)):
        raise ValueError(f"config.stages={tuple(config.stages)} trains nothing: include 'sft' and/or 'rl'")
    assess_stages(config, spec, workdir, mesh=mesh)
    if storage.is_writer():
        storage.copy_tree(current, final)
    storage.barrier(f"final:{final}")
    return final


def rl_replay_rows(config, agent: Agent, records) -> tuple:
    """The RL stage's replay rows (``rl.replay_coef``): the SFT replay rows of ``records``. Empty,
    with a warning, for an agent that answers no training query right at least half the time: as
    in SFT, it has nothing of its own to replay, and RL runs without the term."""
    replay = tuple(replay_examples(agent, records, seed=config.seed, max_len=max(config.sft.length_buckets)))
    if not replay:
        logger.warning("%s: no training query answered right at least half the time; RL runs without replay",
                       agent.name)
    return replay


# -------------------------------------------------------------------------------- assessment

ASSESSED_STAGES = ("base", "sft", "rl")
ASSESSMENT_TABLE_FILE = "assessment.txt"


def stage_export_dir(spec: AgentSpec, workdir: str | Path, stage: str) -> Path | None:
    """The agent as a stage left it ("base": the pre-trained agent; "sft", "rl": that stage's
    export), or None when the stage has not run."""
    if stage == "base":
        return storage.path(spec.path)
    export = storage.join(workdir, "agents", spec.name, stage, "export")
    return export if (export / "config.json").is_file() else None


def assessment_path(spec: AgentSpec, workdir: str | Path, stage: str) -> Path:
    return storage.join(workdir, "agents", spec.name, stage, assessment_lib.ASSESSMENT_FILE)


def assess_stages(config, spec: AgentSpec, workdir: str | Path, mesh=None) -> dict[str, dict]:
    """Self-assessment (``selfaware.assessment``) of each stage in ``config.assess.stages`` that
    exists for this agent, on held-out queries; cached in ``agents/<name>/<stage>/assessment.json``.

    "base" (the pre-trained agent) is assessed on the plain prompt only: its answers are the
    reference ground truth ("did the agent know it before training") scored next to the trained
    agent's own plain answers.
    """
    if not config.assess.enabled:
        return {}
    unknown = [s for s in config.assess.stages if s not in ASSESSED_STAGES]
    if unknown:
        raise ValueError(f"config.assess.stages={tuple(config.assess.stages)}: unknown {unknown}; "
                         f"choose from {ASSESSED_STAGES}")
    examples = heldout_examples(config, workdir)
    alphas = tuple(float(a) for a in config.assess.alphas)
    kwargs = dict(max_new_tokens=config.assess.max_new_tokens, batch_size=config.assess.batch_size)
    results = {}
    reference = None
    for stage in config.assess.stages:
        model_dir = stage_export_dir(spec, workdir, stage)
        if model_dir is None:
            continue
        loader = lambda d=model_dir: agents_lib.load_agent(  # noqa: E731
            spec, dtype=config.dtype, param_dtype=config.param_dtype, mesh=mesh, path=d)
        if stage == "base":
            results[stage] = assessment_lib.ensure_assessment(
                loader, examples, (), assessment_path(spec, workdir, stage), **kwargs)
            reference = results[stage]["queries"]["plain_correct"]
            continue
        results[stage] = assessment_lib.ensure_assessment(
            loader, examples, alphas, assessment_path(spec, workdir, stage), reference_correct=reference, **kwargs)
        scores = results[stage]["alphas"]
        logger.info("%s %s: refusal rate %s, self-assessment accuracy %s (alpha %s)", spec.name, stage,
                    " / ".join(f"{scores[k]['refusal_rate']:.2f}" for k in scores),
                    " / ".join(f"{scores[k]['accuracy']:.2f}" for k in scores), " / ".join(scores))
    return results


def write_assessment_table(config, specs: list[AgentSpec], workdir: str | Path) -> str:
    """The table of every assessed agent and stage (read from the cached assessment files)."""
    rows = []
    for spec in specs:
        for stage in config.assess.stages:
            path = assessment_path(spec, workdir, stage)
            if path.is_file():
                rows.append((spec.name, stage, json.loads(path.read_text(encoding="utf-8"))))
    if not rows:
        return ""
    alphas = tuple(float(a) for a in config.assess.alphas)
    table = assessment_lib.format_table(rows, alphas)
    note = ("Self-assessment on held-out queries (greedy). plain: plain-prompt accuracy; ref@a: refusal rate "
            "under scenario a; acc/F1@a: refusal as a detector of 'its own plain-prompt answer is wrong' "
            "(refusal = positive class); vs-pre@a: the same against the pre-trained agent's plain answer; "
            "ans.acc@a: accuracy of the answers it gave under scenario a.")
    if storage.is_writer():
        storage.write_text(storage.join(workdir, "agents", ASSESSMENT_TABLE_FILE), note + "\n" + table + "\n")
    logger.info("%s\n%s", note, table)
    return table


def _pad_id(agent: Agent) -> int:
    pad = agent.tokenizer.pad_token_id
    return int(pad if pad is not None else agent.tokenizer.eos_token_id)


def _write_label_summary(label_dir: Path, records) -> None:
    p = [r.p_correct for r in records]
    summary = {"queries": len(records), "mean_p_correct": sum(p) / max(len(p), 1),
               "never_correct": sum(x == 0 for x in p), "always_correct": sum(x == 1 for x in p)}
    if storage.is_writer():
        storage.write_text(label_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def make_mesh_from_config(config):
    return sharding_lib.make_mesh(dict(config.mesh))
