"""The plan of a run, made before it starts, without loading any weight onto a device.

    python -m disrouter_jax.train --config configs/rl_alpha05.py --config.plan_only=True \\
        [--config.plan.num_devices=8 --config.plan.platform=gpu --config.plan.device_memory_gib=80]

It prints, per agent, the parameters, where its shapes came from and the bytes per device of each
stage at the configured batches and lengths (``plan_memory.py``); the mesh; per stage the steps,
rows, generations and tokens; the rows of every data set; and every problem: an input that is
missing or unusable (``preflight.py``) or a stage over the device memory. ``plan.*`` plans for
another host (8 GPUs from a laptop). A plan with problems exits with status 2; every training and
evaluation run checks its inputs the same way before it loads anything.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

from disrouter_jax import plan_memory, preflight, task_data
from disrouter_jax.agents import AgentSpec
from disrouter_jax.errors import SetupError
from disrouter_jax.plan_memory import GIB, StageMemory
from disrouter_jax.preflight import AgentCheck, Problem, TaskCheck
from disrouter_jax.sharding import MeshConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Target:
    num_devices: int
    platform: str
    device_memory: int | None  # bytes per device; None: unknown (memory is not checked)
    mesh: dict[str, int]


@dataclasses.dataclass(frozen=True)
class AgentPlan:
    check: AgentCheck
    trained: bool
    stages: tuple[StageMemory, ...]

    @property
    def peak(self) -> StageMemory | None:
        return max(self.stages, key=lambda s: s.total, default=None)


@dataclasses.dataclass(frozen=True)
class StageWork:
    stage: str
    steps: int  # optimizer updates, or generation batches
    rows: int  # rows per step
    generations: int
    new_tokens: int  # at most
    trained_tokens: int  # at most


@dataclasses.dataclass(frozen=True)
class Plan:
    target: Target
    agents: tuple[AgentPlan, ...]
    tasks: tuple[TaskCheck, ...]
    work: tuple[StageWork, ...]
    evaluation: StageMemory | None
    problems: tuple[Problem, ...]


def target_for(config) -> Target:
    """The devices planned for: ``plan.*``, else this host's."""
    import jax

    num_devices = int(config.plan.num_devices) or jax.device_count()
    platform = config.plan.platform or jax.default_backend()
    memory = int(config.plan.device_memory_gib * GIB) or None
    if memory is None and platform == jax.default_backend():
        # This process's own device: another host's raises on memory_stats() (multi-process runs).
        memory = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")  # GPUs and TPUs report it
    try:
        mesh = MeshConfig(**dict(config.mesh)).sizes(num_devices)
    except ValueError as err:
        raise SetupError(f"config.mesh: {err}") from None
    return Target(num_devices, platform, memory, mesh)


def pool_specs(config, workdir: str | Path) -> tuple[list[AgentSpec], list[Problem]]:
    """The configured agents; a toy pool only once it is built (the run builds it)."""
    if config.pool.toy:
        from disrouter_jax.toy import pool as toy_pool

        root = task_data.toy_pool_dir(config, workdir)
        try:
            return [AgentSpec(a.name, str(a.path), a.cost) for a in toy_pool.load_pool(root).agents], []
        except Exception as err:  # not built yet, or partly
            return [], [Problem("config", "pool.toy", f"the toy pool at {root} is not built yet ({err}); the run builds it")]
    if not config.pool.agents:
        return [], [Problem("config", "pool.agents", "empty: list the agents (name, path, cost) in cascade order")]
    return [AgentSpec.from_dict(a, where=f"config.pool.agents[{i}]") for i, a in enumerate(config.pool.agents)], []


def queries_used(config, workdir: str | Path, tasks: list[TaskCheck], role: str, cap: int) -> int | None:
    """Queries a stage reads over ``role``'s tasks: ``cap`` per task (0 = all) of the rows that
    parse, less the rows held out where a task trains on its evaluation rows; None if unknown."""
    total = 0
    for check in (t for t in tasks if t.role == role and not t.problems):
        if check.rows is None:  # the Hub: only the cap is known
            if not cap:
                return None
            total += cap
            continue
        rows = check.rows
        evaluated = {t.name for t in tasks if t.role == "eval" and not t.problems}
        if role == "train" and check.name in evaluated and task_data.trains_on_eval_rows(config, check.name, workdir):
            rows = max(rows - task_data.rows_held_out(config), 0)  # checked by preflight.check_task
        total += min(rows, cap) if cap else rows
    return total


def stage_work(config, train_queries: int | None, assess_queries: int | None,
               eval_queries: int | None = None, num_agents: int = 0) -> list[StageWork]:
    """What each trained agent's stages do (the same for every agent), then the evaluation."""
    length, work = max(config.sft.length_buckets), []
    if ("label" in config.stages or "sft" in config.stages) and train_queries is not None:
        n, new = config.label.num_samples, config.label.max_new_tokens
        work.append(StageWork("label", math.ceil(train_queries / config.label.batch_size),
                              config.label.batch_size * n, train_queries * n, train_queries * n * new, 0))
    if "sft" in config.stages:
        rows = config.sft.batch_size
        work.append(StageWork("sft", config.sft.steps, rows, 0, 0, config.sft.steps * rows * length))
    if "rl" in config.stages:
        rows = config.rl.prompts_per_step * config.rl.group_size
        work.append(StageWork("rl", config.rl.steps, rows, config.rl.steps * rows,
                              config.rl.steps * rows * config.rl.max_new_tokens, config.rl.steps * rows * length))
    if config.assess.enabled and assess_queries is not None:
        per_stage = [1 if s == "base" else 1 + len(config.assess.alphas) for s in config.assess.stages]
        generations = assess_queries * sum(per_stage)
        work.append(StageWork("assess", math.ceil(generations / config.assess.batch_size), config.assess.batch_size,
                              generations, generations * config.assess.max_new_tokens, 0))
    if "eval" in config and eval_queries is not None:
        # Per query and agent at most: each scenario's reply for the outcome tables, the live
        # cascade and the SFT ablation, plus the plain replies of the trained and untrained pool.
        e = config.eval
        per_query = num_agents * (len(e.alphas) * (1 + bool(e.run_cascade) + bool(e.sft_ablation)) + 2)
        generations = eval_queries * per_query
        work.append(StageWork("evaluation", math.ceil(generations / e.batch_size), e.batch_size, generations,
                              generations * e.max_new_tokens, 0))
    return work


def make_plan(config, workdir: str | Path, specs: list[AgentSpec] | None = None, *, memory: bool = True) -> Plan:
    """Everything the module docstring lists, for ``specs`` (default: the config's pool);
    ``memory=False`` leaves out the bytes per device (the inputs are still checked)."""
    from disrouter_jax import pipeline

    target = target_for(config)
    problems: list[Problem] = []
    if specs is None:
        specs, problems = pool_specs(config, workdir)
    trained = {s.name for s in pipeline.agents_to_train(config, specs)}
    checks = [preflight.check_agent(spec) for spec in specs]
    tasks = preflight.check_tasks(config, workdir) if specs else []
    agents = []
    for check in checks:
        problems.extend(check.problems)
        stages = () if check.model_config is None or not memory else tuple(plan_memory.agent_stage_memory(
            config, check.model_config, target.mesh, target.platform, trained=check.spec.name in trained))
        agents.append(AgentPlan(check, check.spec.name in trained, stages))
    for task in tasks:
        problems.extend(task.problems)
    evaluation = None
    known = [c.model_config for c in checks if c.model_config is not None]
    if memory and "eval" in config and known and config.eval.placement == "shared":
        copies = 2 if config.eval.train_agents and config.eval.baseline_agents == "base" else 1
        evaluation = plan_memory.evaluation_memory(config, known, target.mesh, copies=copies)
    problems.extend(memory_problems(config, target, agents, evaluation))
    work = stage_work(config, queries_used(config, workdir, tasks, "train", config.data.train_per_task),
                      queries_used(config, workdir, tasks, "eval", config.assess.per_task),
                      queries_used(config, workdir, tasks, "eval", config.data.eval_per_task), len(specs))
    return Plan(target, tuple(agents), tuple(tasks), tuple(work), evaluation, tuple(problems))


def memory_problems(config, target: Target, agents: list[AgentPlan], evaluation: StageMemory | None) -> list[Problem]:
    if target.device_memory is None:
        return []
    budget, problems = target.device_memory, []
    for agent in agents:
        for stage in agent.stages:
            if stage.total > budget:
                problems.append(Problem("memory", agent.check.spec.name, over_budget(config, target, agent, stage)))
    if evaluation is not None and evaluation.total > budget:
        problems.append(Problem("memory", "evaluation", f"{_stage_text(evaluation)}, over the {budget / GIB:.1f} GiB "
                                                        "of a device; use config.eval.placement=per_agent or more devices"))
    return problems


def over_budget(config, target: Target, agent: AgentPlan, stage: StageMemory) -> str:
    """The message for a stage over the device memory, with the gradient accumulation that fits."""
    text = f"{_stage_text(stage)}, over the {target.device_memory / GIB:.1f} GiB of a device"
    name = {"sft": "sft", "rl update": "rl"}.get(stage.stage)
    if name is None:
        return text + "; shard wider (config.mesh) or lower the stage's batch_size"
    rows, replay = plan_memory.train_batch_rows(config, name), plan_memory.replay_batch_rows(config, name)
    fixed = stage.total - stage.parts["activations"] - stage.parts.get("accumulators", 0)
    # Micro-batches split the replay rows too: a count that does not divide them does not run.
    for accum in (k for k in range(1, rows + 1) if rows % k == 0 and replay % k == 0):
        need = fixed + plan_memory.training_activations(config, agent.check.model_config, target.mesh,
                                                        target.platform, name, accum)
        need += plan_memory.accumulator_bytes(stage.parts["grads"], config) if accum > 1 else 0
        if need <= target.device_memory:
            return text + f"; --config.{name}.grad_accum={accum} fits ({need / GIB:.1f} GiB)"
    return text + "; even one row per micro-batch does not fit: shard wider (config.mesh) or use LoRA"


def _stage_text(stage: StageMemory) -> str:
    parts = " + ".join(f"{name} {size / GIB:.1f}" for name, size in stage.parts.items())
    return f"{stage.stage} needs {stage.total / GIB:.1f} GiB per device ({parts})"


def check_before_run(config, workdir: str | Path, specs: list[AgentSpec]) -> Plan:
    """A run's preflight: a missing or unusable input stops it (SetupError naming the first);
    a stage over the device memory is only a warning (the figures are upper estimates)."""
    # Sizing the stages only matters against a known device memory (not on a CPU host).
    plan = make_plan(config, workdir, specs, memory=target_for(config).device_memory is not None)
    inputs = [p for p in plan.problems if p.kind != "memory"]
    for problem in plan.problems:
        if problem.kind == "memory":
            logger.warning("plan: %s", problem)
    if inputs:
        more = f" (and {len(inputs) - 1} more: --config.plan_only=True lists them all)" if len(inputs) > 1 else ""
        raise SetupError(f"{inputs[0]}{more}")
    return plan


def print_plan(config, workdir: str | Path, title: str) -> None:
    """``--config.plan_only=True`` of the train and evaluate commands: prints the plan; problems
    end it with a SetupError (one line, exit status 2)."""
    from disrouter_jax import distributed

    made = make_plan(config, workdir)
    if distributed.is_coordinator():
        print(format_plan(made, config, title), flush=True)
    if made.problems:
        raise SetupError(f"the plan found {len(made.problems)} problem(s), listed above")


# ------------------------------------------------------------------------------------ text


def format_plan(plan: Plan, config, title: str = "") -> str:
    t = plan.target
    memory = f"{t.device_memory / GIB:.1f} GiB each" if t.device_memory else "memory unknown (not checked)"
    mesh = " ".join(f"{k}={v}" for k, v in t.mesh.items())
    training = f"LoRA rank {config.lora.rank}" if config.lora.enabled else "full fine-tuning"
    attention = "fused (cuDNN) where 16-bit" if t.platform == "gpu" else "XLA (scores materialised)"
    lines = [f"plan{' for ' + title if title else ''}: {t.num_devices} {t.platform} devices, {memory}; mesh {mesh}",
             f"compute {config.dtype}, parameters {config.param_dtype}, {training}, attention {attention}; "
             f"GiB per device, upper estimates at the longest length bucket ({max(config.sft.length_buckets)} tokens)",
             ""]
    stage_names = list(dict.fromkeys(s.stage for a in plan.agents for s in a.stages))
    header = ["agent", "family", "params", "shapes from", *stage_names, "peak"]
    rows = []
    for agent in plan.agents:
        mc, by_stage = agent.check.model_config, {s.stage: s.total for s in agent.stages}
        peak = agent.peak
        rows.append([agent.check.spec.name, mc.family if mc else "?", _count(mc.num_params) if mc else "?",
                     agent.check.shapes_from or "-", *(_gib(by_stage.get(n)) for n in stage_names),
                     f"{_gib(peak.total)} {peak.stage}" if peak else ("not trained" if mc else "?")])
    lines += _table(header, rows)
    lines += ["", "each agent's peak, by part (GiB per device):"]
    for agent in plan.agents:
        if agent.peak:
            parts = " + ".join(f"{k} {_gib(v)}" for k, v in agent.peak.parts.items())
            lines.append(f"  {agent.check.spec.name}: {agent.peak.stage} = {parts}")
    if plan.evaluation:
        parts = " + ".join(f"{k} {_gib(v)}" for k, v in plan.evaluation.parts.items())
        lines.append(f"  evaluation (every agent on the shared mesh): {_gib(plan.evaluation.total)} = {parts}")
    lines += ["", "work per trained agent (and the evaluation, for the pool):"]
    lines += _table(["stage", "steps", "rows/step", "generations", "new tokens <=", "trained tokens <="],
                    [[w.stage, f"{w.steps:,}", f"{w.rows:,}", f"{w.generations:,}", _count(w.new_tokens),
                      _count(w.trained_tokens)] for w in plan.work])
    if plan.tasks:
        lines += ["", "data:"]
        lines += _table(["task", "role", "split", "rows", "skipped", "source"],
                        [[c.name, c.role, c.split or "-", "?" if c.rows is None else f"{c.rows:,}",
                          ", ".join(f"{k}: {v}" for k, v in c.skipped.items()) or "-", c.source or "-"]
                         for c in plan.tasks])
    lines += ["", f"problems: {len(plan.problems)}" if plan.problems else "problems: none"]
    lines += [f"  {p}" for p in plan.problems]
    return "\n".join(lines)


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.1f}"


def _count(n: int) -> str:
    """Millions with one decimal (as launch/README.md counts parameters), small counts as they are."""
    return f"{n / 1e6:,.1f}M" if n >= 1e5 else f"{n:,}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Text columns left-aligned, figures right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    text = [any(str(r[i])[:1].isalpha() for r in rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if t else str(c).rjust(w)  # noqa: E731
                              for c, w, t in zip(r, widths, text)).rstrip()
    return [fmt(header), *(fmt(r) for r in rows)]
