"""DiSRouter's routing records: the live cascade engine at each α (or the replay of the outcome
table), its agreement with that replay, and the "SFT only" ablation.

The live cascade runs on one process or many alike: each process routes its block of the
queries (``distributed.work.process_shard``) and the records are gathered in query order. The
engine's statistics describe one run, so they are kept only when one process ran every query.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax

from disrouter_jax import pipeline
from disrouter_jax.agents import AgentSpec, load_agent
from disrouter_jax.cascade import engine, log, methods, replay, report
from disrouter_jax.cascade.reply_store import ReplyStore
from disrouter_jax.distributed import work

logger = logging.getLogger(__name__)


def rows_for(records: Sequence[log.RoutingRecord], alpha: float) -> list[log.RoutingRecord]:
    return [r for r in records if round(r.alpha, 6) == round(alpha, 6)]


def live_cascade(agents, queries: Sequence[engine.Query], alpha: float, config: engine.EngineConfig,
                 pool: Sequence[str]) -> tuple[list[log.RoutingRecord], dict | None]:
    """(records in query order, the engine's statistics or None when several processes ran)."""
    run = engine.Cascade(agents, config).run(work.process_shard(queries), alpha)
    blocks = work.gather_objects(run.records)
    stats = {"pipelined": run.pipelined, "agents": run.stats(pool)} if len(blocks) == 1 else None
    return [record for block in blocks for record in block], stats


def cascade_records(agents, queries, alphas: Sequence[float], config: engine.EngineConfig, pool: Sequence[str],
                    replayed: Sequence[log.RoutingRecord], logged: Mapping, plain_index, engine_stats: dict, *,
                    run_cascade: bool) -> list[log.RoutingRecord]:
    """DiSRouter's records per α: the replay of the outcome table (``run_cascade=False``), the
    routing log's when it has every query, else the live engine's with forced-answer labels.
    ``engine_stats`` gets the statistics of each live run (by α's mode key)."""
    records = []
    for alpha in alphas:
        replay_rows = rows_for(replayed, alpha)
        if not run_cascade:
            records += replay_rows
            continue
        if all(r.key in logged for r in replay_rows):
            records += [logged[r.key] for r in replay_rows]
            continue
        run_records, stats = live_cascade(agents, queries, alpha, config, pool)
        if stats is not None:
            engine_stats[engine.mode_key(alpha)] = stats
        records += [methods.with_forced_labels(r, plain_index) for r in run_records]
    return records


def replay_agreement(records: Sequence[log.RoutingRecord], replayed: Sequence[log.RoutingRecord],
                     alphas: Sequence[float]) -> dict[str, float]:
    """Per α, the share of queries the live cascade routed as the outcome table's replay does
    (1.0 expected with greedy decoding)."""
    by_key = {r.key: r for r in replayed}
    agreement = {}
    for alpha in alphas:
        live = rows_for(records, alpha)
        same = sum(methods.route_signature(r) == methods.route_signature(by_key[r.key]) for r in live)
        agreement[engine.mode_key(alpha)] = same / len(live)
    return agreement


def sft_only_records(config, workdir: Path, base_specs: Sequence[AgentSpec], queries, replies, pool, costs,
                     engine_cfg, mesh) -> list[log.RoutingRecord]:
    """The ablation "SFT only": the same cascade with every trained agent as it was after SFT
    (before RL), replayed from its greedy replies (cached in eval/sft_replies); the last agent's
    plain replies are the evaluated pool's. Empty, with a warning, when an agent has no SFT export
    or when several processes run (its reply cache is written by one)."""
    if jax.process_count() > 1:
        logger.warning("eval.sft_ablation runs on one process only: skipped")
        return []
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
