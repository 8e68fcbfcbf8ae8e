"""report.json, plots and the terminal table — all derived from routing records only.

``build_report(records, agents, costs, meta)`` is a pure function of the routing log, so every
figure in report.json can be recomputed from routing_log.jsonl (:func:`recompute_report`).
Layout: ``results[alpha_key][group][method] -> figures`` (see ``metrics.evaluate_group``);
groups are "all", "in_domain", "out_of_domain" and "dataset:<name>".

Writing never silently overwrites: the new report is written atomically (``storage.write_text``);
a different existing report.json is first kept as ``report.prev-NNN.json`` (the next
free number, so no earlier version is ever lost); an identical one is left untouched.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from disrouter_jax import storage
from disrouter_jax.cascade import baselines, bootstrap
from disrouter_jax.cascade.log import (DISROUTER, IN_DOMAIN, OUT_OF_DOMAIN, RoutingRecord, read_routing_log,
                                       record_families)
from disrouter_jax.cascade.metrics import ALL, alpha_key, evaluate_group, group_records, pool_costs

REPORT_FORMAT = "disrouter_jax.report/v1"
REPORT_FILE = "report.json"
ROUTING_LOG_FILE = "routing_log.jsonl"
OUTCOMES_FILE = "outcomes.jsonl"
PLOT_FILES = ("utility_vs_alpha.png", "accuracy_vs_cost.png", "agent_share.png")

# DiSRouter with its agents as SFT left them (before RL): the ablation of the RL stage.
SFT_ONLY = "disrouter_sft"
# Router method names live in routers.py (which imports JAX); repeated here to keep report light.
METHOD_ORDER = (DISROUTER, SFT_ONLY, "classifier_router", "frugalgpt", baselines.SMALLEST, baselines.LARGEST,
                baselines.RANDOM_UNIFORM, baselines.RANDOM_COST_MATCHED, baselines.ORACLE)
MAIN_GROUPS = (ALL, IN_DOMAIN, OUT_OF_DOMAIN)


def _ordered_methods(methods) -> list[str]:
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(set(methods) - set(known))


def build_report(records: Sequence[RoutingRecord], agents: Sequence[str],
                 costs: Optional[Mapping[str, float]] = None, meta: Optional[Mapping] = None,
                 assessors: Optional[Mapping] = None) -> dict:
    """Every figure per α × group × method, computed from ``records`` alone.

    ``agents`` fixes the pool order of the per-agent figures; ``costs`` (default
    :func:`metrics.default_costs`) and ``meta`` are stored as given (they do not change figures:
    each record carries the cost its method paid). Oracle figures come from the "oracle" records.
    ``assessors`` (``cascade.assessors``: per-agent F1 on every query, from the outcome tables and
    the classifier's judgements, which the routing log does not hold) is stored as given.
    ``families`` (agent -> model family) is read off the records' visits, when they name them.
    """
    records = list(records)
    if not records:
        raise ValueError("build_report: no routing records")
    seen: dict[tuple, RoutingRecord] = {}
    for record in records:
        if record.key in seen:
            raise ValueError(f"build_report: duplicate record for (method, alpha, dataset, query_id) = {record.key}")
        seen[record.key] = record
    oracle_index = {(round(r.alpha, 6), r.dataset, r.query_id): r for r in records if r.method == baselines.ORACLE}
    by_alpha: dict[float, list[RoutingRecord]] = {}
    for record in records:
        by_alpha.setdefault(round(record.alpha, 6), []).append(record)
    results, groups_seen = {}, []
    for alpha in sorted(by_alpha):
        per_group = {}
        for group, group_recs in group_records(by_alpha[alpha]).items():
            groups_seen += [group] if group not in groups_seen else []
            by_method: dict[str, list[RoutingRecord]] = {}
            for record in group_recs:
                by_method.setdefault(record.method, []).append(record)
            per_group[group] = {m: evaluate_group(by_method[m], agents, oracle_index)
                                for m in _ordered_methods(by_method)}
            _attach_intervals(per_group[group], group_recs)
        results[alpha_key(alpha)] = per_group
    families = record_families(records)
    return {
        "format": REPORT_FORMAT,
        "agents": list(agents),
        **({"families": {a: families[a] for a in agents if a in families}} if families else {}),
        "costs": pool_costs(agents, costs),
        "alphas": [alpha_key(a) for a in sorted(by_alpha)],
        "methods": _ordered_methods({r.method for r in records}),
        "groups": [g for g in MAIN_GROUPS if g in groups_seen] + sorted(set(groups_seen) - set(MAIN_GROUPS)),
        "results": results,
        **({"assessors": dict(assessors)} if assessors else {}),
        "meta": dict(meta or {}),
    }


def _attach_intervals(figures_by_method: dict, records: Sequence[RoutingRecord]) -> None:
    """Each method's 95 % paired-bootstrap interval of utility ("utility_ci") and, against
    DiSRouter, of the difference DiSRouter − method on the queries both were scored on
    ("vs_disrouter")."""
    intervals = bootstrap.paired_intervals(records, DISROUTER)
    for method, figures in figures_by_method.items():
        figures["utility_ci"] = intervals["utility"][method]
        if method in intervals["difference"]:
            figures["vs_disrouter"] = intervals["difference"][method]


def recompute_report(routing_log_path: str | os.PathLike, report: Mapping) -> dict:
    """Rebuild a report from a routing log with the pool/costs/meta stored in ``report``."""
    return build_report(read_routing_log(routing_log_path), report["agents"], report["costs"], report.get("meta"),
                        report.get("assessors"))


def _next_prev_path(workdir) -> Path:
    number = 1
    while (workdir / f"report.prev-{number:03d}.json").exists():
        number += 1
    return workdir / f"report.prev-{number:03d}.json"


def write_report(workdir: str | os.PathLike, report: Mapping) -> Path:
    """Write ``workdir/report.json`` atomically, keeping any different previous one (module doc)."""
    workdir = storage.path(workdir)
    text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    target = workdir / REPORT_FILE
    if target.exists() and target.read_text(encoding="utf-8") == text:
        return target
    # Copied aside, then replaced by one atomic write: an object store cannot rename, and one
    # path for both keeps a local run's files the same as a bucket's.
    if target.exists():
        storage.write_bytes(_next_prev_path(workdir), target.read_bytes())
    return storage.write_text(target, text)


def read_report(path: str | os.PathLike) -> dict:
    path = storage.path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if report.get("format") != REPORT_FORMAT:
        raise ValueError(f"{path}: field 'format' is {report.get('format')!r}, expected {REPORT_FORMAT!r}")
    return report


# ----------------------------------------------------------------------------- plots


def _plot_groups(report: Mapping) -> list[str]:
    return [g for g in MAIN_GROUPS if g in report["groups"]]


def _figure(n_panels: int) -> tuple[Figure, list]:
    figure = Figure(figsize=(5.0 * n_panels, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]


def _series(report: Mapping, group: str, method: str, field: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for key in report["alphas"]:
        figures = report["results"][key].get(group, {}).get(method)
        if figures is not None and figures.get(field) is not None:
            xs.append(float(key))
            ys.append(figures[field])
    return xs, ys


def plot_utility(report: Mapping, path: str | os.PathLike) -> Path:
    """Utility of every method across α, one panel per domain group."""
    groups = _plot_groups(report)
    figure, axes = _figure(len(groups))
    for ax, group in zip(axes, groups):
        for method in report["methods"]:
            xs, ys = _series(report, group, method, "utility")
            ax.plot(xs, ys, marker="o", linestyle="--" if method == baselines.ORACLE else "-", label=method)
        ax.set(title=f"utility ({group})", xlabel="alpha", ylabel="accuracy - alpha * cost")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small")
    return _save_png(figure, path)


def plot_frontier(report: Mapping, path: str | os.PathLike) -> Path:
    """Accuracy against mean cost; each method's points (one per α) joined into its frontier."""
    groups = _plot_groups(report)
    figure, axes = _figure(len(groups))
    for ax, group in zip(axes, groups):
        for method in report["methods"]:
            alphas, costs = _series(report, group, method, "mean_cost")
            _, accuracies = _series(report, group, method, "accuracy")
            points = sorted(zip(costs, accuracies, alphas))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
            for cost, accuracy, alpha in points:
                ax.annotate(f"{alpha:g}", (cost, accuracy), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set(title=f"accuracy vs cost ({group})", xlabel="mean cost", ylabel="accuracy")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small")
    return _save_png(figure, path)


def plot_agent_share(report: Mapping, path: str | os.PathLike, method: str = DISROUTER) -> Path:
    """Stacked bars: share of queries finally answered by each agent, per α."""
    groups = _plot_groups(report)
    figure, axes = _figure(len(groups))
    for ax, group in zip(axes, groups):
        keys = [k for k in report["alphas"] if method in report["results"][k].get(group, {})]
        bottom = [0.0] * len(keys)
        # Bars at integer positions labelled by α: text keys would make matplotlib log a
        # "categorical units" notice for every bar.
        positions = list(range(len(keys)))
        for agent in report["agents"]:
            share = [report["results"][k][group][method]["final_share"][agent] for k in keys]
            ax.bar(positions, share, bottom=bottom, label=agent)
            bottom = [b + s for b, s in zip(bottom, share)]
        ax.set_xticks(positions, keys)
        ax.set(title=f"{method}: final agent share ({group})", xlabel="alpha", ylabel="share of queries", ylim=(0, 1))
    axes[-1].legend(fontsize="small")
    return _save_png(figure, path)


def _save_png(figure, path):
    """Saves ``figure`` to ``path``; on an object store as one put of the PNG bytes."""
    if not storage.is_url(path):
        figure.savefig(path, format="png")
        return Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return storage.write_bytes(path, buffer.getvalue())


def write_plots(workdir: str | os.PathLike, report: Mapping, method: str = DISROUTER) -> list[Path]:
    """The three PNGs of :data:`PLOT_FILES` under ``workdir``."""
    workdir = storage.path(workdir)
    if not storage.is_url(workdir):
        workdir.mkdir(parents=True, exist_ok=True)
    utility_png, frontier_png, share_png = (workdir / name for name in PLOT_FILES)
    return [plot_utility(report, utility_png), plot_frontier(report, frontier_png),
            plot_agent_share(report, share_png, method)]


# ----------------------------------------------------------------------------- terminal table


def _cell(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(ci) -> str:
    return "-" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _difference(diff) -> str:
    return "-" if diff is None else f"{diff['mean']:+.3f} {_interval(diff['ci'])}"


def format_summary_table(report: Mapping, groups: Optional[Sequence[str]] = None) -> str:
    """Plain-text table: per group and α, each method's accuracy, cost, utility and % of oracle."""
    groups = list(groups) if groups is not None else _plot_groups(report)
    width = max([len(m) for m in report["methods"]] + [6])
    header = (f"{'method':<{width}}  {'acc':>6}  {'cost':>6}  {'utility':>7}  {'95% CI':>15}  {'%oracle':>7}  "
              f"{'disrouter - method [95% CI]':>29}  {'forced':>6}  {'n':>5}")
    lines = []
    if report.get("families"):
        lines.append("pool: " + ", ".join(f"{a} ({report['families'].get(a, '?')})" for a in report["agents"]))
    for group in groups:
        for key in report["alphas"]:
            methods = report["results"][key].get(group)
            if not methods:
                continue
            lines += ["", f"[{group}] alpha = {key}", header, "-" * len(header)]
            for method, f in methods.items():
                lines.append(f"{method:<{width}}  {_cell(f['accuracy']):>6}  {_cell(f['mean_cost']):>6}  "
                             f"{_cell(f['utility']):>7}  {_interval(f.get('utility_ci')):>15}  "
                             f"{_cell(f['pct_oracle_utility'], 1):>7}  {_difference(f.get('vs_disrouter')):>29}  "
                             f"{f['forced_refusals']:>6}  {f['n']:>5}")
    return "\n".join(lines).lstrip("\n")


def format_share_table(report: Mapping, group: str = IN_DOMAIN, method: str = DISROUTER) -> str:
    """Share of ``group``'s queries each agent finally answered under ``method``, one row per α."""
    keys = [k for k in report["alphas"] if method in report["results"][k].get(group, {})]
    if not keys:
        return ""
    width = max(len(a) for a in report["agents"]) + 2
    lines = [f"{method}: share of answered queries per agent [{group}]",
             f"{'alpha':<7}" + "".join(f"{a:>{width}}" for a in report["agents"])]
    for key in keys:
        share = report["results"][key][group][method]["final_share"]
        lines.append(f"{key:<7}" + "".join(f"{share[a]:>{width}.3f}" for a in report["agents"]))
    return "\n".join(lines)
