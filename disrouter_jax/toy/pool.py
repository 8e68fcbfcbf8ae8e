"""The toy agent pool: tiny agents of increasing size pre-trained on the toy world.

`build_pool(out_dir, config)` builds (or reuses) a pool directory::

    out_dir/
      pool.json                 the contract for later stages: agents in cost order (name, path,
                                cost, params, held-out accuracy per family, build seconds), the
                                world config and the config hash
      tokenizer/                the world's tokenizer (also copied into every agent)
      tokenizer-<dialect>/      mixed pools only: the world's tokenizer of another dialect (e.g.
                                llama3), copied into that dialect's agents
      tasks/toy_knowledge/{train,test}.jsonl, tasks/toy_skill/..., tasks/toy_ood/test.jsonl
                                the registered toy tasks' files
      agents/<name>/            a normal Hugging Face model directory: config.json,
                                model.safetensors, generation_config.json, tokenizer files, and
                                toy_agent.json (written last: the agent's completion record)

An agent is "a Hugging Face model directory + a cost", exactly like a Qwen2.5 agent. Agents are
Qwen2 with the ChatML tokenizer, except in a mixed pool (`PoolConfig.reduced(mixed=True)`), where
one is a Llama with a Llama-3 tokenizer and template (`AgentSpec.family` / `.dialect`). Each agent is
pre-trained from scratch by the project's jitted SFT step (`toy.pretrain`), saved, reloaded from
its directory and scored on the held-out queries with greedy generation and the toy tasks' checker.
Configuration: `toy.pool_config` (re-exported here).

Determinism: everything derives from `PoolConfig` (world seed, pool seed); rebuilding an agent
gives the same safetensors bytes on the same software stack.

Caching: each agent directory is built under a temporary name and renamed into place, with its
completion record inside, so a crash never leaves a half-written agent under its final name. A
rebuild reuses every agent whose record carries the same fingerprint (world, agent spec, level,
training knobs, seed; costs excluded) and trains only the missing ones. A directory built with a
different config is never silently replaced: pass `overwrite=True`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from disrouter_jax import storage
from disrouter_jax import runtime
from disrouter_jax.models import hf_io
from disrouter_jax.toy import tasks as toy_tasks
from disrouter_jax.toy.pool_config import (
    FORMAT_VERSION, AgentSpec, PoolConfig, default_costs, stable_hash)
from disrouter_jax.toy.pretrain import PromptIds, plain_messages, pretrain_agent, score_agent, special_ids
from disrouter_jax.toy.tokenizer import CHATML, build_tokenizer, dialect_named, load_tokenizer
from disrouter_jax.toy.world import FAMILIES, HELDOUT, SPLITS, ToyWorld

logger = logging.getLogger(__name__)

POOL_FILE = "pool.json"
AGENT_RECORD_FILE = "toy_agent.json"
TOKENIZER_RECORD_FILE = "toy_tokenizer.json"
TOKENIZER_DIR = "tokenizer"
AGENTS_DIR = "agents"
TASKS_DIR = "tasks"
# Held-out accuracy is also measured under this scenario's routing prompt (robustness check).
SCENARIO_PROBE_ALPHA = 0.5

__all__ = [
    "AGENT_RECORD_FILE", "POOL_FILE", "AgentSpec", "Pool", "PoolAgent", "PoolConfig", "PoolError",
    "build_pool", "default_costs", "load_pool", "plain_messages", "pretrain_agent", "score_agent",
]


class PoolError(ValueError):
    """A pool directory that cannot be used as asked; the message names the file or agent."""


@dataclasses.dataclass(frozen=True)
class PoolAgent:
    """One agent of a pool: a Hugging Face model directory + a cost, with its build record."""

    name: str
    path: Path
    cost: float
    level: int
    num_params: int
    heldout_correct: Mapping[str, int]  # greedy, plain prompt
    heldout_total: Mapping[str, int]
    heldout_correct_scenario: Mapping[str, int]  # greedy, under the SCENARIO_PROBE_ALPHA routing prompt
    build_seconds: float
    family: str = "qwen2"  # model family (config.json's model_type)
    dialect: str = CHATML.name  # tokenizer dialect (`toy.tokenizer.DIALECTS`)

    @property
    def heldout_accuracy(self) -> dict[str, float]:
        return {f: self.heldout_correct[f] / self.heldout_total[f] if self.heldout_total[f] else 0.0
                for f in self.heldout_total}

    @property
    def heldout_correct_total(self) -> int:
        return sum(self.heldout_correct.values())

    @property
    def heldout_total_all(self) -> int:
        return sum(self.heldout_total.values())


@dataclasses.dataclass(frozen=True)
class Pool:
    root: Path
    agents: tuple[PoolAgent, ...]  # cost order
    config: PoolConfig
    config_hash: str
    tokenizer_dir: Path  # the ChatML tokenizer's
    task_dirs: Mapping[str, Path]  # task name -> directory of its {train,test}.jsonl
    tokenizer_dirs: Mapping[str, Path] = dataclasses.field(default_factory=dict)  # dialect -> dir (all of them)

    @property
    def families(self) -> dict[str, str]:
        return {a.name: a.family for a in self.agents}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.agents)

    @property
    def costs(self) -> tuple[float, ...]:
        return tuple(a.cost for a in self.agents)

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(a.path for a in self.agents)

    def agent(self, name: str) -> PoolAgent:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(f"pool {self.root} has no agent {name!r}; agents: {', '.join(self.names)}")

    def world(self) -> ToyWorld:
        return ToyWorld(self.config.world)

    def table(self) -> str:
        """One line per agent: params, cost, held-out accuracy per family and overall (plain
        prompt), overall under the routing prompt of alpha=SCENARIO_PROBE_ALPHA, build seconds."""

        def cell(correct: int, total: int) -> str:
            return f"{correct:>4}/{total:<4} {correct / max(total, 1):>6.1%}"

        # Only the families this world asks (the two-option one is off by default).
        families = [f for f in FAMILIES if any(a.heldout_total.get(f, 0) for a in self.agents)]
        titles = [f"heldout {f}" for f in families] + ["heldout all", f"all, alpha={SCENARIO_PROBE_ALPHA}"]
        mixed = self.config.is_mixed
        kind = (lambda a: f" {a.family + '/' + a.dialect:<14}") if mixed else (lambda a: "")
        lines = [f"{'agent':<10}" + (f" {'family/tokens':<14}" if mixed else "") + f" {'params':>9} {'cost':>5} "
                 + " ".join(f"{t:>17}" for t in titles) + f" {'build s':>8}"]
        for a in self.agents:
            cells = [cell(a.heldout_correct[f], a.heldout_total[f]) for f in families]
            cells.append(cell(a.heldout_correct_total, a.heldout_total_all))
            cells.append(cell(sum(a.heldout_correct_scenario.values()), a.heldout_total_all))
            lines.append(f"{a.name:<10}{kind(a)} {a.num_params:>9,} {a.cost:>5.2f} " + " ".join(f"{c:>17}" for c in cells)
                         + f" {a.build_seconds:>8.1f}")
        return "\n".join(lines)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PoolError(f"{path}: not valid JSON ({err})") from err


def _read_record(directory: Path, filename: str) -> dict[str, Any] | None:
    path = directory / filename
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a damaged record marks an incomplete directory: rebuild it


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _fresh_tmp_dir(parent: Path, name: str) -> Path:
    tmp = parent / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def tokenizer_dir_name(dialect: str) -> str:
    return TOKENIZER_DIR if dialect == CHATML.name else f"{TOKENIZER_DIR}-{dialect}"


def _ensure_tokenizer(world: ToyWorld, out_dir: Path, dialect: str = CHATML.name):
    tokenizer_dir = out_dir / tokenizer_dir_name(dialect)
    key = {"format_version": FORMAT_VERSION, "world": dataclasses.asdict(world.config)}
    if dialect != CHATML.name:  # ChatML's hash stays the one default pools were built with
        key["dialect"] = dialect
    world_hash = stable_hash(key)
    record = _read_record(tokenizer_dir, TOKENIZER_RECORD_FILE)
    if record is None or record.get("world_hash") != world_hash:
        tmp = _fresh_tmp_dir(out_dir, tokenizer_dir.name)
        build_tokenizer(world, tmp, dialect=dialect_named(dialect))
        _write_json_atomic(tmp / TOKENIZER_RECORD_FILE, {"world_hash": world_hash})
        _replace_dir(tmp, tokenizer_dir)
    return load_tokenizer(tokenizer_dir), tokenizer_dir


def _tokenizer_files(tokenizer_dir: Path) -> list[Path]:
    return sorted(p for p in tokenizer_dir.iterdir() if p.is_file() and p.name != TOKENIZER_RECORD_FILE)


def _write_generation_config(agent_dir: Path, tokenizer) -> None:
    """Like Qwen2.5-Instruct's: stop at <|im_end|> or <|endoftext|>, pad with <|endoftext|> (bos:
    <|endoftext|> too); like Llama 3's: stop at <|eot_id|> or <|end_of_text|>, bos <|begin_of_text|>."""
    from transformers import GenerationConfig

    ids = special_ids(tokenizer)
    GenerationConfig(bos_token_id=ids["bos"], eos_token_id=[ids["eos"], ids["pad"]], pad_token_id=ids["pad"],
                     do_sample=False).save_pretrained(agent_dir)


def _build_agent(config: PoolConfig, level: int, world: ToyWorld, tokenizer, tokenizer_dir: Path, out_dir: Path,
                 *, progress: bool, prompt_ids: PromptIds) -> dict[str, Any]:
    spec = config.agents[level]
    agents_dir = out_dir / AGENTS_DIR
    started = time.perf_counter()
    model, report = pretrain_agent(config, level, world, tokenizer, progress=progress, prompt_ids=prompt_ids)
    tmp = _fresh_tmp_dir(agents_dir, spec.name)
    hf_io.save_pretrained(model, tmp, overwrite=True)
    for path in _tokenizer_files(tokenizer_dir):
        shutil.copy2(path, tmp / path.name)
    _write_generation_config(tmp, tokenizer)
    # Score the agent as every later stage will see it: reloaded from its own directory.
    saved = hf_io.from_pretrained(tmp)
    correct, correct_scenario = score_agent(saved, tokenizer, world, alphas=(None, SCENARIO_PROBE_ALPHA),
                                            max_new_tokens=config.eval_max_new_tokens, model_dir=tmp)
    totals = {f: len(world.queries_for(HELDOUT, f)) for f in FAMILIES}
    record = {
        "fingerprint": config.agent_fingerprint(level),
        "name": spec.name,
        "level": level,
        "params": model.config.num_params,
        "heldout_correct": {f: len(ids) for f, ids in correct.items()},
        "heldout_total": totals,
        "heldout_correct_ids": {f: list(ids) for f, ids in correct.items()},
        "heldout_correct_scenario": {f: len(ids) for f, ids in correct_scenario.items()},
        "scenario_probe_alpha": SCENARIO_PROBE_ALPHA,
        "train_steps": report.steps,
        "competence": report.competence,
        "final_train_loss": report.final_loss,
        "train_loss_curve": [list(point) for point in report.loss_curve],
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    _write_json_atomic(tmp / AGENT_RECORD_FILE, record)
    _replace_dir(tmp, agents_dir / spec.name)
    return record


def default_workers() -> int:
    """Agents pre-trained at once: 2 where there are 2 cores or more. XLA already keeps ~1.7 of 2
    cores busy with one such small model, so the gain there is small (default pool on 2 cores:
    314 s vs 330 s, byte-identical agents); it grows with the cores."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def _core_groups(workers: int) -> list[set[int] | None]:
    """The cores this process may use, split into one disjoint group per worker (None: no pinning,
    where there are fewer cores than workers or no affinity API)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) < workers:
        return [None] * workers
    return [set(cores[i::workers]) for i in range(workers)]


# In a worker process: {"own": its group of cores, "all": every core it may use}; empty: not pinned.
_WORKER_CORES: dict[str, set[int]] = {}


def _init_worker(core_groups) -> None:
    """Worker initializer: `runtime.keep_freed_memory`, and take a group of cores from the queue
    `core_groups` (None: no pinning).

    JAX's CPU client is created here, while every core is allowed: its thread pool, and so the
    programs it compiles and the agents' bytes, are those of a single process on the machine.
    """
    runtime.keep_freed_memory()
    group = core_groups.get()
    if group is None:
        return
    import jax

    jax.devices()
    _WORKER_CORES.update(own=group, all=set(os.sched_getaffinity(0)))


def _use_cores(cores: set[int]) -> None:
    for thread in os.listdir("/proc/self/task"):  # every thread: XLA's pool is already running
        try:
            os.sched_setaffinity(int(thread), cores)
        except ProcessLookupError:  # the thread has just exited
            pass


def _build_agent_in_process(config_dict: dict[str, Any], level: int, tokenizer_dir: str, out_dir: str, *,
                            last: bool) -> dict[str, Any]:
    """`_build_agent` in a worker process: everything rebuilt from plain arguments.

    A pinned worker trains on its own cores: two workers then no longer preempt each other's
    threads in the middle of a parallel op (default pool on 2 cores: 218 s, against 241 s
    unpinned). The `last` agent (the smallest) ends up alone once the other worker is done: it may
    use every core.
    """
    if _WORKER_CORES:
        _use_cores(_WORKER_CORES["all" if last else "own"])
    config = PoolConfig.from_dict(config_dict)
    tokenizer = load_tokenizer(tokenizer_dir)
    return _build_agent(config, level, ToyWorld(config.world), tokenizer, Path(tokenizer_dir), Path(out_dir),
                        progress=False, prompt_ids=PromptIds(tokenizer))


def _build_agents(config: PoolConfig, levels: list[int], world: ToyWorld, tokenizers: Mapping[str, tuple[Any, Path]],
                  out_dir: Path, *, progress: bool, workers: int) -> dict[int, dict[str, Any]]:
    """Pre-train, save and score the agents `levels`, each with the tokenizer of its dialect
    (`tokenizers`: dialect -> (tokenizer, directory)); {level: completion record}."""
    for level in levels:
        logger.info("agent %s: building (level %d of %d)", config.agents[level].name, level, len(config.agents))
    if workers <= 1 or len(levels) <= 1:
        prompt_ids = {dialect: PromptIds(tokenizer) for dialect, (tokenizer, _) in tokenizers.items()}
        records = {}
        for level in levels:
            dialect = config.agents[level].dialect
            tokenizer, tokenizer_dir = tokenizers[dialect]
            records[level] = _build_agent(config, level, world, tokenizer, tokenizer_dir, out_dir, progress=progress,
                                          prompt_ids=prompt_ids[dialect])
        return records
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    records = {}
    workers = min(workers, len(levels))
    context = multiprocessing.get_context("spawn")  # not forked: the parent has initialised JAX
    core_groups = context.SimpleQueue()
    for group in _core_groups(workers):
        core_groups.put(group)
    # Largest agents first (they take longest).
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(core_groups,)) as executor, \
            tqdm(total=len(levels), desc=f"agents ({workers} at once)", unit="agent", disable=not progress) as bar:
        order = sorted(levels, reverse=True)
        futures = {executor.submit(_build_agent_in_process, config.to_dict(), level,
                                   str(tokenizers[config.agents[level].dialect][1]), str(out_dir),
                                   last=level == order[-1]): level for level in order}
        for future in as_completed(futures):
            records[futures[future]] = future.result()
            bar.set_postfix_str(config.agents[futures[future]].name)
            bar.update(1)
    return records


def build_pool(out_dir: str | os.PathLike, config: PoolConfig | None = None, *, progress: bool = True,
               overwrite: bool = False, workers: int | None = None) -> Pool:
    """Build the pool in `out_dir` (see the module docstring), reusing whatever is already built.

    `workers` > 1 pre-trains that many missing agents at once, each in its own process (None:
    `default_workers()`); an agent's weights do not depend on it.

    A complete pool built with the same config is returned as is; agents missing from a partial
    pool are trained. A directory holding a pool or agents of a *different* config raises
    `PoolError` unless `overwrite=True`, which rebuilds only what differs.
    """
    config = PoolConfig() if config is None else config
    if storage.is_url(out_dir):
        return _build_pool_on_store(storage.path(out_dir), config, progress=progress, overwrite=overwrite,
                                    workers=workers)
    out_dir = Path(out_dir)
    config_hash = config.fingerprint()
    manifest_path = out_dir / POOL_FILE
    if manifest_path.is_file():
        manifest = _read_json(manifest_path)
        if manifest.get("config_hash") == config_hash:
            try:
                return load_pool(out_dir)
            except (PoolError, FileNotFoundError) as err:
                logger.info("pool %s is incomplete (%s); rebuilding what is missing", out_dir, err)
        elif not overwrite:
            raise PoolError(f"{manifest_path}: built with config {manifest.get('config_hash')}, not {config_hash}; "
                            "use another output directory or pass overwrite=True (--overwrite)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / AGENTS_DIR).mkdir(exist_ok=True)
    world = ToyWorld(config.world)
    # ChatML's first (every pool has it: `Pool.tokenizer_dir`), then any other dialect's.
    dialects = [CHATML.name] + sorted({a.dialect for a in config.agents} - {CHATML.name})
    tokenizers = {dialect: _ensure_tokenizer(world, out_dir, dialect) for dialect in dialects}
    toy_tasks.write_task_files(world, out_dir / TASKS_DIR)

    records: dict[int, dict[str, Any]] = {}
    missing = []
    for level, spec in enumerate(config.agents):
        agent_dir = out_dir / AGENTS_DIR / spec.name
        record = _read_record(agent_dir, AGENT_RECORD_FILE)
        if record is not None and record.get("fingerprint") == config.agent_fingerprint(level):
            logger.info("agent %s: reusing %s", spec.name, agent_dir)
            records[level] = record
            continue
        if record is not None and not overwrite:
            raise PoolError(f"{agent_dir}: holds agent built with another config (fingerprint "
                            f"{record.get('fingerprint')}, expected {config.agent_fingerprint(level)}); "
                            "use another output directory or pass overwrite=True (--overwrite)")
        missing.append(level)
    records.update(_build_agents(config, missing, world, tokenizers, out_dir, progress=progress,
                                 workers=default_workers() if workers is None else workers))
    records = [records[level] for level in range(len(config.agents))]

    params = [r["params"] for r in records]
    if any(b <= a for a, b in zip(params, params[1:])):
        raise PoolError(f"PoolConfig.agents: parameter counts {params} must increase strictly along the ladder")
    manifest = {
        "format_version": FORMAT_VERSION,
        "config_hash": config_hash,
        "config": config.to_dict(),
        "world": dataclasses.asdict(config.world),
        "tokenizer": TOKENIZER_DIR,
        # The tasks this world asks (the two-option family is off by default: no files, no entry).
        "tasks": {name: f"{TASKS_DIR}/{name}" for name, family in toy_tasks.FAMILY_OF_TASK.items()
                  if any(world.queries_for(split, family) for split in SPLITS)},
        "agents": [
            {"name": r["name"], "path": f"{AGENTS_DIR}/{r['name']}", "cost": cost, "level": r["level"],
             "params": r["params"],
             "heldout_accuracy": {f: r["heldout_correct"][f] / r["heldout_total"][f] if r["heldout_total"][f] else 0.0
                                  for f in FAMILIES},
             "heldout_correct": r["heldout_correct"], "heldout_total": r["heldout_total"],
             "heldout_correct_scenario": r["heldout_correct_scenario"],
             "scenario_probe_alpha": r["scenario_probe_alpha"],
             "build_seconds": r["build_seconds"],
             # Mixed pools only, so that a default pool's manifest stays byte for byte as it was.
             **({"family": spec.family, "dialect": spec.dialect} if config.is_mixed else {})}
            for r, cost, spec in zip(records, config.agent_costs, config.agents)
        ],
    }
    if config.is_mixed:
        manifest["tokenizers"] = {dialect: tokenizer_dir_name(dialect) for dialect in dialects}
    _write_json_atomic(manifest_path, manifest)
    return load_pool(out_dir)


def _build_pool_on_store(url, config: PoolConfig, **kwargs) -> Pool:
    """A pool on an object store: built (or completed) in its local cache copy, then uploaded with
    pool.json last, so a reader that finds the manifest finds every file it names."""
    manifest_path = url / POOL_FILE
    if manifest_path.is_file() and _read_json(manifest_path).get("config_hash") == config.fingerprint():
        try:
            return load_pool(url)
        except (PoolError, FileNotFoundError) as err:
            logger.info("pool %s is incomplete (%s); rebuilding what is missing", url, err)
    local = storage.local_dir(url) if storage.exists(url) else storage.cache_dir_for(url)
    build_pool(local, config, **kwargs)
    storage.upload_tree(local, url, last=(POOL_FILE,))
    return load_pool(url)


def load_pool(out_dir: str | os.PathLike) -> Pool:
    """Read `out_dir/pool.json` and check every agent directory it names is complete. A pool on an
    object store is read from its local cache copy (``storage.local_dir``): its paths are local."""
    if storage.is_url(out_dir):
        if not (storage.path(out_dir) / POOL_FILE).is_file():
            raise FileNotFoundError(f"{out_dir}/{POOL_FILE}: no pool here; build one with "
                                    f"`python -m disrouter_jax.toy build --out {out_dir}`")
        out_dir = storage.local_dir(out_dir)
    out_dir = Path(out_dir)
    manifest_path = out_dir / POOL_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no pool here; build one with "
                                f"`python -m disrouter_jax.toy build --out {out_dir}`")
    manifest = _read_json(manifest_path)
    try:
        config = PoolConfig.from_dict(manifest["config"])
        agents = []
        for entry in manifest["agents"]:
            path = out_dir / entry["path"]
            for required in ("config.json", "model.safetensors", "tokenizer.json", AGENT_RECORD_FILE):
                if not (path / required).is_file():
                    raise PoolError(f"{manifest_path}: agent {entry['name']!r} is incomplete: {path / required} "
                                    "is missing (rerun the build to restore it)")
            agents.append(PoolAgent(
                name=entry["name"], path=path, cost=float(entry["cost"]), level=int(entry["level"]),
                num_params=int(entry["params"]), heldout_correct=dict(entry["heldout_correct"]),
                heldout_total=dict(entry["heldout_total"]),
                heldout_correct_scenario=dict(entry["heldout_correct_scenario"]),
                build_seconds=float(entry["build_seconds"]),
                family=str(entry.get("family", "qwen2")), dialect=str(entry.get("dialect", CHATML.name))))
        task_dirs = {name: out_dir / rel for name, rel in manifest["tasks"].items()}
        tokenizer_dir = out_dir / manifest["tokenizer"]
        tokenizer_dirs = {dialect: out_dir / rel
                          for dialect, rel in manifest.get("tokenizers", {CHATML.name: manifest["tokenizer"]}).items()}
        config_hash = manifest["config_hash"]
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, PoolError):
            raise
        raise PoolError(f"{manifest_path}: malformed pool manifest ({type(err).__name__}: {err})") from err
    return Pool(root=out_dir, agents=tuple(agents), config=config, config_hash=config_hash,
                tokenizer_dir=tokenizer_dir, task_dirs=task_dirs, tokenizer_dirs=tokenizer_dirs)
