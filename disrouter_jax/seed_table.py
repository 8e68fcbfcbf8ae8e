"""The multi-seed table: one `evaluate` report per world/pool seed, combined.

    python -m disrouter_jax.seed_table --out DIR REPORT.json [REPORT.json ...]

`make seeds` (README) runs `evaluate` once per seed (`--config.seed=S`, a workdir each) and then
this command. Per α and dataset group it gives each method's utility and % of oracle utility,
every seed's figure and their mean, and for every method the DiSRouter − method difference with
the number of seeds whose paired 95 % interval lies above zero. Writes `DIR/seeds.json` and
`DIR/seeds.md` (the same table as Markdown) and prints it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from disrouter_jax.cascade import report as report_lib
from disrouter_jax.cascade.log import DISROUTER


GROUPS = ("in_domain", "out_of_domain")


class SeedTableError(ValueError):
    pass


def combine(reports: dict[str, dict]) -> dict:
    """{seed label: report.json dict} -> per alpha / group / method: the figures of every seed and
    their mean. Only methods, alphas and groups present in every report are kept."""
    if not reports:
        raise SeedTableError("no reports to combine")
    labels = list(reports)
    alphas = [a for a in reports[labels[0]]["results"] if all(a in r["results"] for r in reports.values())]
    table: dict = {"seeds": labels, "results": {}}
    for alpha in alphas:
        for group in GROUPS:
            per_seed = [reports[s]["results"][alpha].get(group) for s in labels]
            if any(p is None for p in per_seed):
                continue
            methods = [m for m in per_seed[0] if all(m in p for p in per_seed)]
            rows = {}
            for method in methods:
                cells = [p[method] for p in per_seed]
                utility = [c["utility"] for c in cells]
                pct = [c.get("pct_oracle_utility") for c in cells]
                row = {"utility": utility, "utility_mean": statistics.fmean(utility),
                       "pct_oracle": pct,
                       "pct_oracle_mean": statistics.fmean(pct) if None not in pct else None}
                diffs = [c.get("vs_disrouter") for c in cells]
                if method != DISROUTER and None not in diffs:
                    row["vs_disrouter"] = [d["mean"] for d in diffs]
                    row["vs_disrouter_mean"] = statistics.fmean(row["vs_disrouter"])
                    row["seeds_ci_above_zero"] = sum(d["ci"][0] > 0 for d in diffs)
                rows[method] = row
            table["results"].setdefault(alpha, {})[group] = rows
    if all(r.get("assessors") for r in reports.values()):
        table["assessors"] = combine_assessors([reports[s]["assessors"] for s in labels])
    return table


def combine_assessors(per_seed: list[dict]) -> dict:
    """Per method / α / group / agent: every seed's assessor F1 (``cascade.assessors``) and the mean,
    for what every seed scored."""
    out: dict = {}
    for method, by_alpha in per_seed[0].items():
        for alpha, by_group in by_alpha.items():
            for group, by_agent in by_group.items():
                for agent in by_agent:
                    f1 = [seed.get(method, {}).get(alpha, {}).get(group, {}).get(agent, {}).get("f1")
                          for seed in per_seed]
                    if None in f1:
                        continue
                    out.setdefault(method, {}).setdefault(alpha, {}).setdefault(group, {})[agent] = {
                        "f1": f1, "f1_mean": statistics.fmean(f1)}
    return out


def format_table(table: dict, markdown: bool = False) -> str:
    """Per group, one row per method: mean utility (each seed's) and % of oracle, per alpha, and
    the DiSRouter − method difference with the seeds whose interval is above zero."""
    seeds = table["seeds"]
    lines = []
    alphas = list(table["results"])
    for group in GROUPS:
        if not all(group in table["results"][a] for a in alphas):
            continue
        lines.append(f"{'### ' if markdown else '['}{group}{'' if markdown else ']'} utility, mean over "
                     f"seeds {', '.join(seeds)} (each seed's in brackets); DiSRouter - method "
                     f"(seeds with the paired 95 % CI above 0)")
        header = ["method"] + [f"alpha={a}" for a in alphas] + [f"d@{a}" for a in alphas]
        body = []
        for method in table["results"][alphas[0]][group]:
            cells = [method]
            for a in alphas:
                row = table["results"][a][group].get(method)
                if row is None:
                    cells.append("-")
                    continue
                pct = "" if row["pct_oracle_mean"] is None else f" {row['pct_oracle_mean']:.1f}%"
                cells.append(f"{row['utility_mean']:.3f}{pct} ({' / '.join(f'{u:.3f}' for u in row['utility'])})")
            for a in alphas:
                row = table["results"][a][group].get(method)
                if row is None or "vs_disrouter" not in row:
                    cells.append("-")
                else:
                    cells.append(f"{row['vs_disrouter_mean']:+.3f} ({row['seeds_ci_above_zero']}/{len(seeds)})")
            body.append(cells)
        lines += _render(header, body, markdown) + [""]
    lines += _format_assessors(table.get("assessors", {}), len(seeds), markdown)
    return "\n".join(lines)


def _format_assessors(assessors: dict, num_seeds: int, markdown: bool) -> list[str]:
    """In-domain assessor F1 per agent (rows) and method × α (columns), mean and each seed's."""
    columns = [(m, a) for m in assessors for a in assessors[m] if "in_domain" in assessors[m][a]]
    agents = list(dict.fromkeys(g for m, a in columns for g in assessors[m][a]["in_domain"]))
    if not agents:
        return []
    header = ["agent"] + [f"{m}@{a}" for m, a in columns]
    body = []
    for agent in agents:
        cells = [agent]
        for method, alpha in columns:
            row = assessors[method][alpha]["in_domain"].get(agent)
            cells.append("-" if row is None else
                         f"{row['f1_mean']:.3f} ({' / '.join(f'{x:.3f}' for x in row['f1'])})")
        body.append(cells)
    lines = [f"{'### ' if markdown else '['}in_domain{'' if markdown else ']'} assessor F1 per agent "
             f"(positive: the agent's answer would be wrong), mean over {num_seeds} seeds (each seed's)"]
    return lines + _render(header, body, markdown) + [""]


def _render(header: list[str], body: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(c) + " |" for c in body]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + body]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m disrouter_jax.seed_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where seeds.json and seeds.md are written")
    parser.add_argument("reports", nargs="+", help="report.json of each seed's evaluate run")
    args = parser.parse_args(argv)
    try:
        reports = {}
        for path in map(Path, args.reports):
            try:
                data = report_lib.read_report(path)
            except (OSError, ValueError) as err:
                raise SeedTableError(str(err)) from None
            label = str(data.get("meta", {}).get("seed", path.parent.name))
            if label in reports:
                label = path.parent.name
            reports[label] = data
        table = combine(reports)
    except SeedTableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table["reports"] = [str(p) for p in args.reports]
    (out / "seeds.json").write_text(json.dumps(table, indent=1))
    (out / "seeds.md").write_text(format_table(table, markdown=True))
    print(format_table(table))
    print(f"seed table: {out / 'seeds.json'}, {out / 'seeds.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
