"""Cascade evaluation: DiSRouter vs single agents, random, oracle and central routers.

    python -m disrouter_jax.evaluate --config configs/eval_cascade.py[:toy] --workdir DIR

One command: builds or reuses the pool (the toy pool for ``:toy``), runs or reuses Self-Awareness
Training, then evaluates. Everything goes under ``--workdir``:

    report.json           every figure per α × group (all / in_domain / out_of_domain / dataset:<name>) × method
    routing_log.jsonl     one line per method × query × α, each visited agent with its model family
                          (report.json is recomputable from it; report.json's "families" comes from it)
    outcomes.jsonl        every agent's decision and correctness per query × α, as the cascade sees the
                          pool (the last agent on the plain prompt) — input of ``replay``
    plain_outcomes.jsonl  every agent's plain-prompt reply per query (keyed per α) — what the
                          single-agent baselines and the central routers see
    router_train_outcomes.jsonl   the same for the queries the routers are fitted on
    utility_vs_alpha.png, accuracy_vs_cost.png, agent_share.png
    eval/replies/<agent>.jsonl    cached generations (eval/base_replies/: the untrained pool's);
                          eval/query_features.npz; eval/manifest.json

How the figures are made (also stored in report.json's ``meta``):
* DiSRouter: the live cascade engine (``cascade.engine``) at each α; its agreement with the replay
  of outcomes.jsonl is reported (``meta.replay_agreement``; 1.0 expected with greedy decoding).
* Self-assessment of a refusal is scored with the agent's *forced answer*: its reply to the plain
  prompt (no refusal option), from the pool as it was before Self-Awareness Training
  (``eval.baseline_agents="base"``; "trained": the evaluated agents' own plain replies, which may
  be refusals). Every agent's plain reply is generated for every query.
* Baselines and central routers route among those agents answering the plain prompt
  (``eval.baseline_replies="plain"``) — the agents used as ordinary LLMs, as in the paper;
  "scenario" gives them the trained agents' α-prompted replies instead. Random: both uniform and
  matched to the cascade's mean cost.
* Routers are fitted on queries the evaluation does not contain (``eval.router_train``): the
  training split by default, or a held-out fraction of the evaluation queries.

Replay mode (no model runs): ``--config.eval.replay_pool=agent0,agent2,agent4`` recomputes every
figure for that sub-pool from a finished workdir's tables (see :func:`run_replay`).

Re-running with the same workdir reuses cached replies, outcome tables, features and routing-log
lines; a workdir evaluated with different settings is refused (``eval/manifest.json``) rather
than mixed, and report.json is never silently overwritten (see ``report.write_report``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app, flags

from disrouter_jax.logs import configure_logging
from ml_collections import config_flags

from disrouter_jax import distributed, errors, pipeline, plan, runtime, storage, task_data
from disrouter_jax.distributed import work as distributed_work
from disrouter_jax.agents import AgentSpec, load_agent
from disrouter_jax.cascade import assessors, engine, log, methods, replay, report, routers
from disrouter_jax.cascade.features import mean_pooled_hidden_states
from disrouter_jax.cascade.log import IN_DOMAIN, OUT_OF_DOMAIN
from disrouter_jax.cascade.metrics import pool_costs
from disrouter_jax.cascade.reply_store import ReplyStore
from disrouter_jax.tasks.mixture import build_mixture

logger = logging.getLogger(__name__)

PLAIN_OUTCOMES_FILE = "plain_outcomes.jsonl"
BASELINE_AGENTS = ("base", "trained")
ROUTER_TRAIN_FILE = "router_train_outcomes.jsonl"
PLACEMENTS = ("shared", "per_agent", "pool")
ROUTER_TRAIN_SOURCES = ("train", "split")
BASELINE_REPLIES = ("plain", "scenario")


# ----------------------------------------------------------------------------- placement


def split_devices(num_devices: int, num_agents: int) -> list[tuple[int, ...]]:
    """Disjoint contiguous device groups, one per agent; later (bigger) agents get the spare
    devices. With fewer devices than agents, agents share devices round-robin."""
    if num_devices < num_agents:
        return [(k % num_devices,) for k in range(num_agents)]
    base, spare = divmod(num_devices, num_agents)
    sizes = [base + (k >= num_agents - spare) for k in range(num_agents)]
    starts = np.cumsum([0] + sizes[:-1])
    return [tuple(range(int(s), int(s) + n)) for s, n in zip(starts, sizes)]


def place_agents(specs: Sequence[AgentSpec], eval_cfg, num_devices: int) -> list[AgentSpec]:
    """Specs with the devices chosen by ``eval.placement`` / ``eval.agent_devices``."""
    if eval_cfg.placement not in PLACEMENTS:
        raise ValueError(f"config.eval.placement must be one of {PLACEMENTS}, got {eval_cfg.placement!r}")
    explicit = [tuple(int(i) for i in d) for d in eval_cfg.agent_devices]
    if explicit:
        if len(explicit) != len(specs):
            raise ValueError(f"config.eval.agent_devices lists {len(explicit)} device groups for {len(specs)} agents")
        return [dataclasses.replace(s, devices=d, mesh=None) for s, d in zip(specs, explicit)]
    if eval_cfg.placement == "pool":
        return list(specs)
    if eval_cfg.placement == "shared":
        return [dataclasses.replace(s, devices=None, mesh=None) for s in specs]
    groups = split_devices(num_devices, len(specs))
    return [dataclasses.replace(s, devices=g, mesh=None) for s, g in zip(specs, groups)]


# ----------------------------------------------------------------------------- queries


def evaluation_queries(config, workdir: Path) -> list[engine.Query]:
    """Each evaluation task's evaluation split (``task_data.split_for``), ``data.eval_per_task`` per
    task (0 = all), shuffled from the seed; ``data.out_of_domain`` tasks form the out-of-domain group."""
    ood = list(config.data.out_of_domain)
    names = list(dict.fromkeys(list(config.data.eval_tasks) + ood))
    by_task = {name: task_data.load_rows(config, name, workdir, "eval") for name in names}
    cap = config.data.eval_per_task or None
    mixture = build_mixture(by_task, seed=config.seed, train_per_task=0,
                            eval_per_task={n: cap or len(e) for n, e in by_task.items()},
                            ood_per_task=cap, holdout_tasks=[n for n in names if n in ood])
    return ([engine.Query(e, IN_DOMAIN) for e in mixture.eval] + [engine.Query(e, OUT_OF_DOMAIN) for e in mixture.ood])


def training_queries(config, workdir: Path, per_task: int) -> list[engine.Query]:
    """Up to ``per_task`` queries of each training task's training split (seeded shuffle)."""
    by_task = {name: task_data.load_rows(config, name, workdir, "train") for name in config.data.train_tasks}
    mixture = build_mixture(by_task, seed=config.seed + 1, train_per_task=per_task or None, eval_per_task=0)
    return [engine.Query(e, IN_DOMAIN) for e in mixture.train]


def select_queries(config, workdir: Path) -> tuple[list[engine.Query], list[engine.Query]]:
    """(evaluation queries, router-fitting queries); disjoint by construction."""
    e = config.eval
    if e.router_train not in ROUTER_TRAIN_SOURCES:
        raise ValueError(f"config.eval.router_train must be one of {ROUTER_TRAIN_SOURCES}, got {e.router_train!r}")
    queries = evaluation_queries(config, workdir)
    if not queries:
        raise ValueError("no evaluation queries: check config.data.eval_tasks / eval_per_task")
    if not e.routers:
        return queries, []
    if e.router_train == "split":
        if not 0.0 < e.router_train_fraction < 1.0:
            raise ValueError(f"config.eval.router_train_fraction must lie in (0, 1), got {e.router_train_fraction}")
        order = np.random.default_rng(e.seed).permutation(len(queries))
        n_fit = int(round(e.router_train_fraction * len(queries)))
        fit = set(order[:n_fit].tolist())
        return [q for i, q in enumerate(queries) if i not in fit], [q for i, q in enumerate(queries) if i in fit]
    eval_keys = {q.key for q in queries}
    fit = [q for q in training_queries(config, workdir, e.router_train_per_task) if q.key not in eval_keys]
    return queries, fit


def _keys_digest(queries: Sequence[engine.Query]) -> str:
    return hashlib.sha256("\n".join(f"{d}\t{q}" for d, q in (x.key for x in queries)).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- workdir reuse


def check_manifest(path: Path, manifest: dict) -> None:
    """Refuse a workdir evaluated with other settings (its logs would mix two evaluations)."""
    if path.exists():
        have = json.loads(path.read_text(encoding="utf-8"))
        if have != manifest:
            diff = sorted(k for k in set(have) | set(manifest) if have.get(k) != manifest.get(k))
            raise ValueError(
                f"{path}: this workdir was evaluated with different settings ({', '.join(diff)} differ). Use a new "
                f"--workdir, or remove {path}, the *.jsonl tables and routing_log.jsonl next to it to re-evaluate "
                "(eval/replies/ keeps reusable generations).")
        return
    storage.write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def sync_table(path: Path, rows: Sequence[log.OutcomeRow]) -> None:
    """Append the outcome rows the file lacks (a finished file is left as it is)."""
    have = {row.key for row in log.read_outcome_table(path)} if path.exists() else set()
    log.write_outcome_table(path, [row for row in rows if row.key not in have])


def sync_routing_log(path: Path, records: Sequence[log.RoutingRecord]) -> list[log.RoutingRecord]:
    """Append missing records; return the log's records for the keys asked (logged lines win)."""
    existing = {r.key: r for r in log.read_routing_log(path)} if path.exists() else {}
    log.write_routing_log(path, [r for r in records if r.key not in existing])
    return [existing.get(r.key, r) for r in records]


def cached_query_features(path: Path, model, prompts_by_key: dict, batch_size: int) -> tuple[list, np.ndarray]:
    """Mean-pooled hidden states per (dataset, query_id), computed once and kept in ``path``."""
    keys = sorted(prompts_by_key)
    if path.exists():
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
            cached = dict(zip(map(tuple, data["keys"].tolist()), data["features"]))
        if all(k in cached for k in keys):
            return keys, np.stack([cached[k] for k in keys])
    features = mean_pooled_hidden_states(model, [prompts_by_key[k] for k in keys], batch_size=batch_size)
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.asarray(keys, dtype=str), features=features)
    storage.write_bytes(path, buffer.getvalue())
    return keys, features


# ----------------------------------------------------------------------------- the evaluation


def run_evaluation(config, workdir, *, specs: Sequence[AgentSpec] | None = None,
                   base_specs: Sequence[AgentSpec] | None = None, mesh=None) -> dict:
    """Everything of the module doc; returns the report. ``specs``/``base_specs`` (trained and
    untrained pool) default to ``pipeline.ensure_trained_pool`` / ``pipeline.ensure_pool``."""
    import jax


    e = config.eval
    workdir = storage.path(workdir)
    timings = {}
    started = time.perf_counter()
    if base_specs is None:
        base_specs = pipeline.ensure_pool(config, workdir)
    if specs is None:
        specs = pipeline.ensure_trained_pool(config, workdir, mesh=mesh) if e.train_agents else base_specs
    timings["pool_and_training_s"] = time.perf_counter() - started
    if e.baseline_replies not in BASELINE_REPLIES:
        raise ValueError(f"config.eval.baseline_replies must be one of {BASELINE_REPLIES}, got {e.baseline_replies!r}")
    if e.get("baseline_agents", "base") not in BASELINE_AGENTS:
        raise ValueError(f"config.eval.baseline_agents must be one of {BASELINE_AGENTS}, got {e.baseline_agents!r}")
    specs = place_agents(specs, e, len(jax.devices()))
    pool = [s.name for s in specs]
    costs = {s.name: float(s.cost) for s in specs}
    alphas = tuple(float(a) for a in e.alphas)
    queries, fit_queries = select_queries(config, workdir)
    engine_cfg = engine.EngineConfig(
        max_new_tokens=e.max_new_tokens, max_batch_size=e.batch_size, micro_batch_size=e.micro_batch_size,
        early_refusal=e.early_refusal, pipeline=e.pipeline, cost_mode=e.cost_mode, progress=config.progress)
    manifest = {
        "agents": [s.to_dict() | {"devices": None, "mesh": None} for s in specs], "alphas": list(alphas),
        "queries": [len(queries), _keys_digest(queries)], "router_queries": [len(fit_queries), _keys_digest(fit_queries)],
        "max_new_tokens": e.max_new_tokens, "early_refusal": e.early_refusal, "cost_mode": e.cost_mode,
        "baseline_replies": e.baseline_replies, "baseline_agents": e.baseline_agents,
        "baselines": list(e.baselines), "routers": list(e.routers),
        "router": [e.router_train, e.router_hidden_size, e.router_steps, e.feature_agent], "seed": e.seed,
        "run_cascade": e.run_cascade, "dtype": config.dtype,
    }
    writer = distributed.is_coordinator()
    if writer:
        check_manifest(workdir / "eval" / "manifest.json", manifest)
    logger.info("evaluating %s on %d queries (%d for router fitting) at alphas %s", pool, len(queries),
                len(fit_queries), alphas)

    started = time.perf_counter()
    multi_process = jax.process_count() > 1
    if multi_process:
        # Data parallel over hosts: every host holds the whole pool on its own devices and runs
        # its block of queries; results are gathered in query order (distributed_work.map_over_processes).
        mesh = distributed_work.local_mesh(dict(config.mesh))
    agents = [load_agent(s, dtype=config.dtype, param_dtype=config.param_dtype, mesh=mesh) for s in specs]
    # Single-agent baselines, central routers and the forced answers that score a refusal use the
    # pool as it was before Self-Awareness Training (eval.baseline_agents="base"), as in the paper.
    base_specs = place_agents(list(base_specs), e, len(jax.devices()))
    separate_base = e.baseline_agents == "base" and [s.path for s in base_specs] != [s.path for s in specs]
    base_agents = ([load_agent(s, dtype=config.dtype, param_dtype=config.param_dtype, mesh=mesh) for s in base_specs]
                   if separate_base else agents)
    # Cached generations: the evaluated agents' in eval/replies, the untrained pool's in eval/base_replies.
    stores = {} if multi_process else {name: ReplyStore(workdir / "eval" / name) for name in ("replies", "base_replies")}

    def agents_replies(pool_agents, qs, modes_alphas, store_name):
        if not multi_process:
            return engine.all_agents_replies(pool_agents, qs, modes_alphas, engine_cfg, forced=True,
                                             store=stores[store_name])

        def per_query(block):
            reps = engine.all_agents_replies(pool_agents, block, modes_alphas, engine_cfg, forced=True)
            return [{m: {a: r[i] for a, r in by_agent.items()} for m, by_agent in reps.items()}
                    for i in range(len(block))]

        rows = distributed_work.map_over_processes(per_query, qs)
        return {m: {a: [row[m][a] for row in rows] for a in rows[0][m]} for m in rows[0]}

    def all_replies(qs, modes_alphas):
        """Every agent's replies, and the baseline pool's plain replies under "base_plain"."""
        reps = agents_replies(agents, qs, modes_alphas, "replies")
        reps["base_plain"] = (agents_replies(base_agents, qs, (), "base_replies")[engine.PLAIN] if separate_base
                              else reps[engine.PLAIN])
        return reps

    replies = all_replies(queries, alphas)
    fit_alphas = alphas if e.baseline_replies == "scenario" else ()
    fit_replies = all_replies(fit_queries, fit_alphas) if fit_queries else {}
    timings["all_agents_s"] = time.perf_counter() - started

    def tables(qs, reps):
        scenario = {a: engine.outcome_rows(qs, a, pool, reps[engine.mode_key(a)], reps["plain"]) for a in alphas} \
            if all(engine.mode_key(a) in reps for a in alphas) else {}
        plain = {a: engine.plain_outcome_rows(qs, a, pool, reps["base_plain"]) for a in alphas}
        return scenario, plain

    outcomes_by_alpha, plain_by_alpha = tables(queries, replies)
    outcomes = [r for a in alphas for r in outcomes_by_alpha[a]]
    plain_rows = [r for a in alphas for r in plain_by_alpha[a]]
    fit_rows: list[log.OutcomeRow] = []
    if fit_queries:
        fit_scenario, fit_plain = tables(fit_queries, fit_replies)
        fit_rows = [r for a in alphas for r in (fit_plain if e.baseline_replies == "plain" else fit_scenario)[a]]
    if writer:
        sync_table(workdir / report.OUTCOMES_FILE, outcomes)
        sync_table(workdir / PLAIN_OUTCOMES_FILE, plain_rows)
        if fit_queries:
            sync_table(workdir / ROUTER_TRAIN_FILE, fit_rows)

    # DiSRouter: the live cascade engine (or its replay), with forced answers for self-assessment.
    routing_path = workdir / report.ROUTING_LOG_FILE
    logged = {r.key: r for r in log.read_routing_log(routing_path)} if routing_path.exists() else {}
    replayed = replay.replay_cascade(outcomes, pool, costs, cost_mode=e.cost_mode)
    plain_index = methods.plain_correct_index(plain_rows)
    stats_path = workdir / "eval" / "cascade_stats.json"
    engine_stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    cascade_records = []
    started = time.perf_counter()
    for alpha, replay_rows in zip(alphas, (rows_for(replayed, a) for a in alphas)):
        if not e.run_cascade:
            cascade_records += replay_rows
            continue
        if all(r.key in logged for r in replay_rows):
            cascade_records += [logged[r.key] for r in replay_rows]
            continue
        if multi_process:
            run_records = distributed_work.map_over_processes(
                lambda block, alpha=alpha: engine.Cascade(agents, engine_cfg).run(block, alpha).records, queries)
        else:
            run = engine.Cascade(agents, engine_cfg).run(queries, alpha)
            engine_stats[engine.mode_key(alpha)] = {"pipelined": run.pipelined, "agents": run.stats(pool)}
            run_records = run.records
        cascade_records += [methods.with_forced_labels(r, plain_index) for r in run_records]
    timings["cascade_s"] = time.perf_counter() - started
    if writer and e.run_cascade:
        storage.write_text(stats_path, json.dumps(engine_stats, indent=2) + "\n")
    by_key = {r.key: r for r in replayed}
    agreement = {}
    for alpha in alphas:
        live = [r for r in cascade_records if round(r.alpha, 6) == round(alpha, 6)]
        same = sum(methods.route_signature(r) == methods.route_signature(by_key[r.key]) for r in live)
        agreement[engine.mode_key(alpha)] = same / len(live)

    records = list(cascade_records)
    if e.sft_ablation:
        if multi_process:
            logger.warning("eval.sft_ablation runs on one process only: skipped")
        else:
            started = time.perf_counter()
            records += sft_only_records(config, workdir, base_specs, queries, replies, pool, costs, engine_cfg, mesh)
            timings["sft_ablation_s"] = time.perf_counter() - started

    # Baselines and central routers, on the same evaluation queries.
    baseline_rows = plain_rows if e.baseline_replies == "plain" else outcomes
    records += methods.baseline_records(e.baselines, baseline_rows, pool, costs, cascade_records, e.seed)
    router_info = {}
    judges = {log.DISROUTER: assessors.self_assessors(outcomes, pool[:-1])}
    if e.routers:
        if not fit_queries:
            raise ValueError("config.eval.routers is set but there are no router-fitting queries "
                             "(config.eval.router_train / data.train_tasks)")
        feature_name = e.feature_agent or base_specs[0].name
        feature_spec = next((s for s in base_specs if s.name == feature_name), None)
        if feature_spec is None:
            raise ValueError(f"config.eval.feature_agent={feature_name!r} is not in the pool {[s.name for s in base_specs]}")
        feature_agent = load_agent(dataclasses.replace(feature_spec, devices=None, mesh=None), dtype=config.dtype,
                                   param_dtype=config.param_dtype, mesh=mesh)
        prompts = {q.key: feature_agent.prompt_ids(q.example, None) for q in list(queries) + list(fit_queries)}
        keys, features_qd = cached_query_features(workdir / "eval" / "query_features.npz", feature_agent.model,
                                                  prompts, e.feature_batch_size)
        router_records, router_info, judged = methods.router_records(
            e.routers, _scorer(e), pool, costs, fit_rows, baseline_rows,
            lambda rows: routers.query_features_for(rows, keys, features_qd))
        router_info["feature_agent"] = feature_name
        records += router_records
        judges.update(judged)
    records = log.with_families(records, {a.name: a.family for a in agents})
    if writer:
        records = sync_routing_log(routing_path, records)

    meta = {
        "setup": config.setup, "seed": config.seed, "alphas": list(alphas), "num_queries": len(queries),
        "num_router_fit_queries": len(fit_queries), "cost_mode": e.cost_mode,
        "disrouter_source": "live cascade engine" if e.run_cascade else "replay of outcomes.jsonl",
        "replay_agreement": agreement, "engine": engine_stats, "routers": router_info,
        "baseline_replies": e.baseline_replies, "router_train": e.router_train,
        "baseline_agents": e.baseline_agents,
        "self_assessment": "a refusal is scored with the agent's forced answer: the plain-prompt reply of the "
                           + ("pool before Self-Awareness Training" if separate_base else "evaluated agent"),
        "random_baselines": "random_uniform: agent drawn uniformly; random_cost_matched: max-entropy draw "
                            "matching the cascade's mean cost at each alpha",
        "refusal_tokens": {a.name: len(engine.refusal_token_ids(a)) for a in agents},
    }
    built = report.build_report(records, pool, costs, meta, assessors=judges)
    if writer:
        report.write_report(workdir, built)
        report.write_plots(workdir, built)
        storage.write_text(workdir / "eval" / "timings.json", json.dumps(timings, indent=2) + "\n")
    return built


def sft_only_records(config, workdir: Path, base_specs: Sequence[AgentSpec], queries, replies, pool, costs,
                     engine_cfg, mesh) -> list[log.RoutingRecord]:
    """The ablation "SFT only": the same cascade with every trained agent as it was after SFT
    (before RL), replayed from its greedy replies (cached in eval/sft_replies); the last agent's
    plain replies are the evaluated pool's. Empty, with a warning, when an agent has no SFT export."""
    e = config.eval
    trained = pool[:-1]
    exports = {s.name: pipeline.stage_export_dir(s, workdir, "sft") for s in base_specs if s.name in trained}
    missing = [name for name, path in exports.items() if path is None]
    if missing:
        logger.warning("eval.sft_ablation: no SFT export for %s: ablation skipped", missing)
        return []
    sft_agents = [load_agent(dataclasses.replace(s, path=str(exports[s.name]), devices=None, mesh=None),
                             dtype=config.dtype, param_dtype=config.param_dtype, mesh=mesh)
                  for s in base_specs if s.name in trained]
    store = ReplyStore(workdir / "eval" / "sft_replies")
    alphas = tuple(float(a) for a in e.alphas)
    scenario = {engine.mode_key(a): {agent.name: store.replies(agent, queries, a, engine_cfg) for agent in sft_agents}
                for a in alphas}
    rows = []
    for alpha in alphas:
        by_agent = dict(scenario[engine.mode_key(alpha)])
        rows += engine.outcome_rows(queries, alpha, pool, by_agent, replies[engine.PLAIN])
    return replay.replay_cascade(rows, pool, costs, cost_mode=e.cost_mode, method=report.SFT_ONLY)


def run_replay(config, workdir, subpool: Sequence[str]) -> dict:
    """Replay mode: every metric for the sub-pool ``subpool`` (cascade order) and every recorded
    α from a finished evaluation's tables, without running a model. Written under
    ``<workdir>/replay/<agent+agent+...>/`` (report.json, routing_log.jsonl, plots).

    The sub-pool's last agent is scored on its plain-prompt reply, as the engine would prompt it
    (``methods.subpool_rows``). Costs: ``eval.replay_costs="renormalize"`` spreads 0.1 … 0.9 over
    the sub-pool (``metrics.default_costs``); "pool" keeps each agent's cost. Routers are refitted
    on the sub-pool from router_train_outcomes.jsonl and the cached query features.
    """
    e = config.eval
    workdir = storage.path(workdir)
    scenario = log.read_outcome_table(workdir / report.OUTCOMES_FILE)
    plain = log.read_outcome_table(workdir / PLAIN_OUTCOMES_FILE)
    full_pool = replay.table_agents(scenario)
    subpool = list(subpool)
    unknown = [a for a in subpool if a not in full_pool]
    if unknown or len(set(subpool)) != len(subpool):
        raise ValueError(f"config.eval.replay_pool={subpool}: must be distinct agents of the evaluated pool {full_pool}")
    if e.replay_costs not in ("renormalize", "pool"):
        raise ValueError(f"config.eval.replay_costs must be 'renormalize' or 'pool', got {e.replay_costs!r}")
    manifest = json.loads((workdir / "eval" / "manifest.json").read_text(encoding="utf-8"))
    full_costs = {a["name"]: float(a["cost"]) for a in manifest["agents"]}
    costs = pool_costs(subpool, None if e.replay_costs == "renormalize" else full_costs)
    rows = methods.subpool_rows(scenario, plain, subpool)
    cascade = replay.replay_cascade(rows, subpool, costs, cost_mode=e.cost_mode)
    baseline_rows = plain if e.baseline_replies == "plain" else rows
    records = cascade + methods.baseline_records(e.baselines, baseline_rows, subpool, costs, cascade, e.seed)
    router_info = {}
    judges = {log.DISROUTER: assessors.self_assessors(rows, subpool[:-1])}
    fit_path, features_path = workdir / ROUTER_TRAIN_FILE, workdir / "eval" / "query_features.npz"
    if e.routers and fit_path.exists() and features_path.exists():
        with np.load(io.BytesIO(features_path.read_bytes()), allow_pickle=False) as data:
            keys, features_qd = [tuple(k) for k in data["keys"].tolist()], data["features"]
        fit_rows = log.read_outcome_table(fit_path)
        if e.baseline_replies == "scenario":
            fit_rows = methods.subpool_rows(fit_rows, fit_rows, subpool)
        router_recs, router_info, judged = methods.router_records(
            e.routers, _scorer(e), subpool, costs, fit_rows, baseline_rows,
            lambda rs: routers.query_features_for(rs, keys, features_qd))
        records += router_recs
        judges.update(judged)
    out_dir = workdir / "replay" / "+".join(subpool)
    full_report = workdir / report.REPORT_FILE
    if full_report.exists():  # the evaluated pool's families, as its report names them
        records = log.with_families(records, report.read_report(full_report).get("families", {}))
    records = sync_routing_log(out_dir / report.ROUTING_LOG_FILE, records)
    meta = {"replay_of": str(workdir), "subpool": subpool, "costs": e.replay_costs, "cost_mode": e.cost_mode,
            "baseline_replies": e.baseline_replies, "routers": router_info,
            "disrouter_source": "replay of outcomes.jsonl; the sub-pool's last agent on its plain-prompt reply"}
    built = report.build_report(records, subpool, costs, meta, assessors=judges)
    report.write_report(out_dir, built)
    report.write_plots(out_dir, built)
    return built


def _scorer(eval_cfg) -> routers.ScorerConfig:
    return routers.ScorerConfig(hidden_size=eval_cfg.router_hidden_size, steps=eval_cfg.router_steps,
                                seed=eval_cfg.seed)


def rows_for(records: Sequence[log.RoutingRecord], alpha: float) -> list[log.RoutingRecord]:
    return [r for r in records if round(r.alpha, 6) == round(alpha, 6)]


# ----------------------------------------------------------------------------- CLI


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
    """Flags are defined only when run as a program (or on a caller's own ``FlagValues``), so
    importing this module next to other entry points with their own ``--config`` never clashes."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/eval_cascade.py[:toy]).",
                                    lock_config=True, flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "Directory for everything the run writes.", flag_values=flag_values)
    flags.mark_flag_as_required("config", flag_values=flag_values)
    return flag_values


def main(argv) -> None:
    del argv
    runtime.keep_freed_memory()
    run_cli(flags.FLAGS)  # app.run exits with main's return value: return nothing


def run_cli(flag_values: flags.FlagValues) -> dict:
    """The command: evaluation (or replay mode) from parsed flags; prints the summary table."""

    distributed.initialize()
    config = flag_values.config
    config_arg = flag_values["config"].config_filename
    workdir = storage.path(flag_values.workdir or Path("workdir") / ("eval_" + (config_arg.partition(":")[2] or "paper")))
    configure_logging()
    with errors.reported_as_one_line():
        if config.plan_only:
            return plan.print_plan(config, workdir, config_arg)
        if not storage.is_url(workdir):
            workdir.mkdir(parents=True, exist_ok=True)
        if config.eval.replay_pool:
            built = run_replay(config, workdir, config.eval.replay_pool)
            out_dir = workdir / "replay" / "+".join(config.eval.replay_pool)
        else:
            plan.check_before_run(config, workdir, pipeline.ensure_pool(config, workdir))
            built = run_evaluation(config, workdir, mesh=pipeline.make_mesh_from_config(config))
            out_dir = workdir
    if distributed.is_coordinator():
        print(report.format_summary_table(built))
        print("\n" + report.format_share_table(built))
        for domain in (IN_DOMAIN, OUT_OF_DOMAIN):
            table = assessors.format_assessor_table(built.get("assessors", {}), domain)
            if table:
                print("\n" + table)
        if not config.eval.replay_pool:
            for subpool in config.eval.subpools:
                if not set(subpool) <= set(built["agents"]):
                    logger.warning("config.eval.subpools: %s is not a sub-pool of %s: skipped", subpool, built["agents"])
                    continue
                sub = run_replay(config, workdir, subpool)
                print(f"\nsub-pool {' + '.join(subpool)} (same agents, no retraining; replayed):")
                print(report.format_summary_table(sub, groups=(log.IN_DOMAIN,)))
        print(f"\nreport: {out_dir / report.REPORT_FILE}\nrouting log: {out_dir / report.ROUTING_LOG_FILE}\n"
              f"plots: {', '.join(str(out_dir / name) for name in report.PLOT_FILES)}")
    return built


if __name__ == "__main__":
    define_flags()
    app.run(main)
