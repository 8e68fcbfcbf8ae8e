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
figure for that sub-pool from a finished workdir's tables (see ``cascade.evaluation.run_replay``).

Re-running with the same workdir reuses cached replies, outcome tables, features and routing-log
lines; a workdir evaluated with different settings is refused (``eval/manifest.json``) rather
than mixed, and report.json is never silently overwritten (see ``report.write_report``).

This module is the command line; the work is in ``cascade.evaluation`` and the modules it names.
"""

from __future__ import annotations

import logging
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from disrouter_jax import distributed, errors, pipeline, plan, runtime, storage
from disrouter_jax.cascade import assessors, log, report
from disrouter_jax.cascade.evaluation import run_evaluation, run_replay
from disrouter_jax.cascade.log import IN_DOMAIN, OUT_OF_DOMAIN
from disrouter_jax.logs import configure_logging

logger = logging.getLogger(__name__)


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
