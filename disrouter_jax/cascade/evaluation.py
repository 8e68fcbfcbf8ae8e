"""The cascade evaluation (``python -m disrouter_jax.evaluate``; its module doc lists the outputs).

One path for one process and many: agents load on :func:`placement.evaluation_mesh`, replies and
the live cascade go through each process's block of the queries (``replies``, ``disrouter``),
and only process 0 writes (``storage.is_writer``). In order:

1. the pool (trained, and the untrained one the baselines use), placed; the queries (``queries``);
2. every agent's replies, and the outcome tables built from them (``replies``, ``tables``);
3. DiSRouter's records: live cascade or replay, forced-answer labels, SFT-only ablation
   (``disrouter``);
4. baselines and central routers on the same queries (:func:`central_router_records`,
   ``methods``);
5. the report (``report``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence

import jax

from disrouter_jax import pipeline, storage
from disrouter_jax.agents import AgentSpec, load_agent
from disrouter_jax.cascade import assessors, disrouter, engine, log, methods, placement, replay, report, routers
from disrouter_jax.cascade import queries as queries_lib
from disrouter_jax.cascade import replies as replies_lib
from disrouter_jax.cascade import tables
from disrouter_jax.cascade.metrics import pool_costs

logger = logging.getLogger(__name__)

BASELINE_AGENTS = ("base", "trained")
BASELINE_REPLIES = ("plain", "scenario")


def run_evaluation(config, workdir, *, specs: Sequence[AgentSpec] | None = None,
                   base_specs: Sequence[AgentSpec] | None = None, mesh=None) -> dict:
    """Everything of the module doc; returns the report. ``specs``/``base_specs`` (trained and
    untrained pool) default to ``pipeline.ensure_trained_pool`` / ``pipeline.ensure_pool``."""
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
    specs = placement.place_agents(specs, e, len(jax.devices()))
    pool = [s.name for s in specs]
    costs = {s.name: float(s.cost) for s in specs}
    alphas = tuple(float(a) for a in e.alphas)
    queries, fit_queries = queries_lib.select_queries(config, workdir)
    engine_cfg = engine.EngineConfig(
        max_new_tokens=e.max_new_tokens, max_batch_size=e.batch_size, micro_batch_size=e.micro_batch_size,
        early_refusal=e.early_refusal, pipeline=e.pipeline, cost_mode=e.cost_mode, progress=config.progress)
    writer = storage.is_writer()
    if writer:
        tables.check_manifest(workdir / tables.MANIFEST_FILE, _manifest(config, specs, alphas, queries, fit_queries))
    logger.info("evaluating %s on %d queries (%d for router fitting) at alphas %s", pool, len(queries),
                len(fit_queries), alphas)

    started = time.perf_counter()
    mesh = placement.evaluation_mesh(config, mesh)
    agents = [load_agent(s, dtype=config.dtype, param_dtype=config.param_dtype, mesh=mesh) for s in specs]
    # Single-agent baselines, central routers and the forced answers that score a refusal use the
    # pool as it was before Self-Awareness Training (eval.baseline_agents="base"), as in the paper.
    base_specs = placement.place_agents(list(base_specs), e, len(jax.devices()))
    separate_base = e.baseline_agents == "base" and [s.path for s in base_specs] != [s.path for s in specs]
    base_agents = ([load_agent(s, dtype=config.dtype, param_dtype=config.param_dtype, mesh=mesh) for s in base_specs]
                   if separate_base else agents)
    stores = replies_lib.reply_stores(workdir)
    replies = replies_lib.all_replies(agents, base_agents, queries, alphas, engine_cfg, stores)
    fit_alphas = alphas if e.baseline_replies == "scenario" else ()
    fit_replies = replies_lib.all_replies(agents, base_agents, fit_queries, fit_alphas, engine_cfg, stores) \
        if fit_queries else {}
    timings["all_agents_s"] = time.perf_counter() - started

    outcomes_by_alpha, plain_by_alpha = tables.outcome_tables(queries, alphas, pool, replies)
    outcomes = [r for a in alphas for r in outcomes_by_alpha[a]]
    plain_rows = [r for a in alphas for r in plain_by_alpha[a]]
    fit_rows: list[log.OutcomeRow] = []
    if fit_queries:
        fit_scenario, fit_plain = tables.outcome_tables(fit_queries, alphas, pool, fit_replies)
        fit_rows = [r for a in alphas for r in (fit_plain if e.baseline_replies == "plain" else fit_scenario)[a]]
    if writer:
        tables.sync_table(workdir / report.OUTCOMES_FILE, outcomes)
        tables.sync_table(workdir / tables.PLAIN_OUTCOMES_FILE, plain_rows)
        if fit_queries:
            tables.sync_table(workdir / tables.ROUTER_TRAIN_FILE, fit_rows)

    # DiSRouter: the live cascade engine (or its replay), with forced answers for self-assessment.
    routing_path = workdir / report.ROUTING_LOG_FILE
    logged = {r.key: r for r in log.read_routing_log(routing_path)} if routing_path.exists() else {}
    replayed = replay.replay_cascade(outcomes, pool, costs, cost_mode=e.cost_mode)
    stats_path = workdir / "eval" / "cascade_stats.json"
    engine_stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    started = time.perf_counter()
    cascade_records = disrouter.cascade_records(
        agents, queries, alphas, engine_cfg, pool, replayed, logged, methods.plain_correct_index(plain_rows),
        engine_stats, run_cascade=e.run_cascade)
    timings["cascade_s"] = time.perf_counter() - started
    if writer and e.run_cascade:
        storage.write_text(stats_path, json.dumps(engine_stats, indent=2) + "\n")
    agreement = disrouter.replay_agreement(cascade_records, replayed, alphas)

    records = list(cascade_records)
    if e.sft_ablation:
        started = time.perf_counter()
        records += disrouter.sft_only_records(config, workdir, base_specs, queries, replies, pool, costs, engine_cfg,
                                              mesh)
        timings["sft_ablation_s"] = time.perf_counter() - started

    # Baselines and central routers, on the same evaluation queries.
    baseline_rows = plain_rows if e.baseline_replies == "plain" else outcomes
    records += methods.baseline_records(e.baselines, baseline_rows, pool, costs, cascade_records, e.seed)
    router_info = {}
    judges = {log.DISROUTER: assessors.self_assessors(outcomes, pool[:-1])}
    if e.routers:
        router_records, router_info, judged = central_router_records(
            config, workdir, base_specs, queries, fit_queries, pool, costs, fit_rows, baseline_rows, mesh)
        records += router_records
        judges.update(judged)
    records = log.with_families(records, {a.name: a.family for a in agents})
    if writer:
        records = tables.sync_routing_log(routing_path, records)

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


def _manifest(config, specs, alphas, queries, fit_queries) -> dict:
    """The settings a workdir's tables depend on (``tables.check_manifest``)."""
    e = config.eval
    return {
        "agents": [s.to_dict() | {"devices": None, "mesh": None} for s in specs], "alphas": list(alphas),
        "queries": [len(queries), queries_lib.keys_digest(queries)],
        "router_queries": [len(fit_queries), queries_lib.keys_digest(fit_queries)],
        "max_new_tokens": e.max_new_tokens, "early_refusal": e.early_refusal, "cost_mode": e.cost_mode,
        "baseline_replies": e.baseline_replies, "baseline_agents": e.baseline_agents,
        "baselines": list(e.baselines), "routers": list(e.routers),
        "router": [e.router_train, e.router_hidden_size, e.router_steps, e.feature_agent], "seed": e.seed,
        "run_cascade": e.run_cascade, "dtype": config.dtype,
    }


def central_router_records(config, workdir, base_specs, queries, fit_queries, pool, costs, fit_rows, baseline_rows,
                           mesh):
    """(records, info, assessors) of the central routers, fitted on ``fit_rows`` and routing
    ``baseline_rows``, on the feature agent's mean-pooled hidden states of each query."""
    e = config.eval
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
    keys, features_qd = tables.cached_query_features(workdir / tables.QUERY_FEATURES_FILE, feature_agent.model,
                                                     prompts, e.feature_batch_size)
    records, info, judged = methods.router_records(
        e.routers, _scorer(e), pool, costs, fit_rows, baseline_rows,
        lambda rows: routers.query_features_for(rows, keys, features_qd))
    info["feature_agent"] = feature_name
    return records, info, judged


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
    plain = log.read_outcome_table(workdir / tables.PLAIN_OUTCOMES_FILE)
    full_pool = replay.table_agents(scenario)
    subpool = list(subpool)
    unknown = [a for a in subpool if a not in full_pool]
    if unknown or len(set(subpool)) != len(subpool):
        raise ValueError(f"config.eval.replay_pool={subpool}: must be distinct agents of the evaluated pool {full_pool}")
    if e.replay_costs not in ("renormalize", "pool"):
        raise ValueError(f"config.eval.replay_costs must be 'renormalize' or 'pool', got {e.replay_costs!r}")
    manifest = json.loads((workdir / tables.MANIFEST_FILE).read_text(encoding="utf-8"))
    full_costs = {a["name"]: float(a["cost"]) for a in manifest["agents"]}
    costs = pool_costs(subpool, None if e.replay_costs == "renormalize" else full_costs)
    rows = methods.subpool_rows(scenario, plain, subpool)
    cascade = replay.replay_cascade(rows, subpool, costs, cost_mode=e.cost_mode)
    baseline_rows = plain if e.baseline_replies == "plain" else rows
    records = cascade + methods.baseline_records(e.baselines, baseline_rows, subpool, costs, cascade, e.seed)
    router_info = {}
    judges = {log.DISROUTER: assessors.self_assessors(rows, subpool[:-1])}
    fit_path, features_path = workdir / tables.ROUTER_TRAIN_FILE, workdir / tables.QUERY_FEATURES_FILE
    if e.routers and fit_path.exists() and features_path.exists():
        keys, features_qd = tables.read_query_features(features_path)
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
    records = tables.sync_routing_log(out_dir / report.ROUTING_LOG_FILE, records)
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
