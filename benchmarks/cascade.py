"""Cascade throughput: the self-routing engine vs every-query-through-every-agent vs a naive loop.

Runs on a trained toy pool (the workdir of ``make demo`` / ``evaluate --config
configs/eval_cascade.py:toy``), so the refusal mix is that of a trained cascade, on its evaluation
queries, at α = 0.2 / 0.5 / 0.8:

- ``engine``: ``cascade.engine.Cascade`` — batched, refused queries compacted into the next
  agent's batch, refusals stopped as soon as the refusal text is complete;
- ``all_agents``: every query through every agent (what a router that needs every answer pays);
- ``naive``: one query at a time through the agents in order, no batching across queries, no
  early refusal (each refusal decodes until its end-of-turn token).

Reports queries/s, the compilations each mode triggered (``generation.TRACE_COUNTS``), and per
agent the queries reached, refusals and decode tokens per refusal.

    python benchmarks/cascade.py --workdir workdir/demo
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def load(workdir: Path, config_path: str, max_queries: int):
    sys.path.insert(0, str(Path(config_path).resolve().parent))
    import eval_cascade

    from disrouter_jax import pipeline
    from disrouter_jax.agents import AgentSpec, load_agent
    from disrouter_jax.cascade.queries import evaluation_queries
    from disrouter_jax.toy import pool as toy_pool
    from disrouter_jax.toy import tasks as _toy_tasks  # noqa: F401  (registers the toy tasks)

    config = eval_cascade.get_config("toy")
    pool = toy_pool.load_pool(pipeline.toy_pool_dir(config, workdir))
    base = [AgentSpec(a.name, str(a.path), a.cost) for a in pool.agents]
    trained = {s.name for s in pipeline.agents_to_train(config, base)}
    specs = [AgentSpec(s.name, str(pipeline.final_dir(workdir, s.name)) if s.name in trained else s.path, s.cost)
             for s in base]
    missing = [s.path for s in specs if not (Path(s.path) / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{workdir}: no trained agents at {missing}; run `make demo` (or "
                                "python -m disrouter_jax.evaluate --config configs/eval_cascade.py:toy "
                                f"--workdir {workdir}) first")
    agents = [load_agent(s, dtype=config.dtype) for s in specs]
    queries = evaluation_queries(config, workdir)[:max_queries]
    return config, agents, queries


def timed(fn):
    from disrouter_jax.generation import TRACE_COUNTS

    before = sum(TRACE_COUNTS.values())
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start, sum(TRACE_COUNTS.values()) - before


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="workdir/demo")
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "eval_cascade.py"))
    parser.add_argument("--alphas", default="0.2,0.5,0.8")
    parser.add_argument("--max-queries", type=int, default=200)
    parser.add_argument("--naive-queries", type=int, default=40, help="queries timed in the naive loop")
    parser.add_argument("--output", default=str(harness.RESULTS_DIR / "cascade.json"))
    args = parser.parse_args(argv)

    from disrouter_jax.cascade import engine

    config, agents, queries = load(Path(args.workdir), args.config, args.max_queries)
    e = config.eval
    batched = engine.EngineConfig(max_new_tokens=e.max_new_tokens, max_batch_size=e.batch_size)
    naive_cfg = engine.EngineConfig(max_new_tokens=e.max_new_tokens, max_batch_size=1, early_refusal=False)
    cascade, naive = engine.Cascade(agents, batched), engine.Cascade(agents, naive_cfg)
    names = cascade.names
    rows = []
    for alpha in (float(a) for a in args.alphas.split(",")):
        cascade.run(queries, alpha)  # compile every program this α needs
        run, t_engine, compiles = timed(lambda: cascade.run(queries, alpha))
        engine.all_agents_replies(agents, queries, [alpha], batched, forced=False)
        _, t_all, all_compiles = timed(lambda: engine.all_agents_replies(agents, queries, [alpha], batched, forced=False))
        subset = queries[: args.naive_queries]
        naive.run(subset[:2], alpha)
        _, t_naive, naive_compiles = timed(lambda: [naive.run([q], alpha) for q in subset])
        finals = collections.Counter(r.final_agent for r in run.records)
        row = {
            "alpha": alpha, "queries": len(queries),
            "engine_qps": len(queries) / t_engine, "engine_s": t_engine, "engine_new_compiles": compiles,
            "all_agents_qps": len(queries) / t_all, "all_agents_new_compiles": all_compiles,
            "naive_qps": len(subset) / t_naive, "naive_new_compiles": naive_compiles,
            "speedup_vs_all_agents": t_all / t_engine,
            "speedup_vs_naive": (t_naive / len(subset)) / (t_engine / len(queries)),
            "final_share": {n: finals[n] / len(queries) for n in names},
            "agents": run.stats(names),
        }
        rows.append(row)
        print(row, file=sys.stderr)
    from disrouter_jax.generation import TRACE_COUNTS

    result = {**harness.environment(), "workdir": args.workdir, "agents": names,
              "total_compilations": dict(TRACE_COUNTS), "rows": rows}
    print_table(result)
    harness.write_result(result, args.output)
    return result


def print_table(result: dict) -> None:
    print(f"\n{result['device_kind']} ({result['jax_backend']}), pool {', '.join(result['agents'])}")
    print(f"{'alpha':>5} {'engine q/s':>10} {'all-agents q/s':>14} {'naive q/s':>9} {'vs all':>7} "
          f"{'vs naive':>8} {'compiles':>8}")
    for r in result["rows"]:
        print(f"{r['alpha']:>5} {r['engine_qps']:>10.1f} {r['all_agents_qps']:>14.1f} {r['naive_qps']:>9.1f} "
              f"{r['speedup_vs_all_agents']:>6.2f}x {r['speedup_vs_naive']:>7.2f}x {r['engine_new_compiles']:>8}")
    print("\ndecode tokens per refusal (early refusal on), per agent and alpha:")
    for r in result["rows"]:
        cells = [f"{n}: {s['tokens_per_refusal']:.1f} ({s['refused']}/{s['reached']})"
                 for n, s in r["agents"].items() if s["tokens_per_refusal"] is not None]
        print(f"  alpha {r['alpha']}: " + ("; ".join(cells) or "no refusals"))
    print(f"compilations in the whole run: {result['total_compilations']}")


if __name__ == "__main__":
    main()
