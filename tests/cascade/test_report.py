"""report.json, its recomputation from routing_log.jsonl, plots and the terminal table."""

import json

import numpy as np
import pytest

from disrouter_jax.cascade import log, replay, report, routers
from tests.cascade.hand_tables import COSTS, POOL, cascade_log_alpha05, oracle_log_alpha05, outcome_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _records():
    """Cascade + every label-free baseline at alpha 0.2 and 0.5 on the hand-built table."""
    return replay.replay_all(outcome_rows(0.5) + outcome_rows(0.2), POOL, COSTS, seed=0)


def test_report_figures_match_hand_arithmetic():
    built = report.build_report(cascade_log_alpha05() + oracle_log_alpha05(), POOL, COSTS, meta={"run": "hand"})
    assert built["alphas"] == ["0.5"]
    assert built["methods"] == ["disrouter", "oracle"]
    assert built["groups"] == ["all", "in_domain", "out_of_domain", "dataset:gsm8k", "dataset:squad"]
    cascade = built["results"]["0.5"]["all"]["disrouter"]
    assert cascade["utility"] == pytest.approx(0.2)  # 0.5 - 0.5 * 0.6
    assert cascade["pct_oracle_utility"] == pytest.approx(40.0)  # 0.2 / 0.5
    assert built["results"]["0.5"]["in_domain"]["disrouter"]["utility"] == pytest.approx(0.35)
    assert built["results"]["0.5"]["all"]["oracle"]["pct_oracle_utility"] == pytest.approx(100.0)
    assert built["meta"] == {"run": "hand"}


def _flat(tree, prefix=()):
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {path: v for k, sub in tree.items() for path, v in _flat(sub, prefix + (k,)).items()}


def _figures_by_plain_sums(log_path, agents):
    """Every figure of report.json["results"], recomputed here from routing_log.jsonl with plain
    counts and sums over its JSON lines (no project code): utility = accuracy - alpha * mean cost;
    self-assessment: positive = refuse, label = that visit's answer (or forced answer) is wrong."""
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    oracle = {(r["alpha"], r["dataset"], r["query_id"]): r for r in lines if r["method"] == "oracle"}
    cells = {}
    for r in lines:
        for group in ("all", r["domain"], "dataset:" + r["dataset"]):
            cells.setdefault((f"{r['alpha']:g}", group, r["method"]), []).append(r)
    out = {}
    for (alpha_key, group, method), rows in cells.items():
        alpha, n = rows[0]["alpha"], len(rows)
        acc = sum(r["correct"] for r in rows) / n
        cost = sum(r["cost"] for r in rows) / n
        orc = [oracle[(r["alpha"], r["dataset"], r["query_id"])] for r in rows]
        o_acc = sum(o["correct"] for o in orc) / n
        o_cost = sum(o["cost"] for o in orc) / n
        fig = {"n": n, "alpha": alpha, "accuracy": acc, "mean_cost": cost, "utility": acc - alpha * cost,
               "forced_refusals": sum(r["forced_refusal"] for r in rows),
               "forced_refusal_rate": sum(r["forced_refusal"] for r in rows) / n,
               "final_share": {a: sum(r["final_agent"] == a for r in rows) / n for a in agents},
               "oracle_accuracy": o_acc, "oracle_mean_cost": o_cost, "oracle_utility": o_acc - alpha * o_cost}
        fig["pct_oracle_utility"] = (100 * fig["utility"] / fig["oracle_utility"]
                                     if fig["oracle_utility"] > 0 else None)
        fig["reached"], fig["answer_rate"], fig["self_assessment"] = {}, {}, {}
        for a in agents:
            visits = [v for r in rows for v in r["visited"] if v["agent"] == a]
            fig["reached"][a] = len(visits)
            answered = sum(v["decision"] == "answer" for v in visits)
            fig["answer_rate"][a] = answered / len(visits) if visits else None
            scored = [v for v in visits if v["correct"] is not None]
            tp = sum(v["decision"] == "refuse" and not v["correct"] for v in scored)
            fp = sum(v["decision"] == "refuse" and v["correct"] for v in scored)
            fn = sum(v["decision"] == "answer" and not v["correct"] for v in scored)
            tn = sum(v["decision"] == "answer" and v["correct"] for v in scored)
            m = len(scored)
            fig["self_assessment"][a] = {
                "n_scored": m, "tp": tp, "fp": fp, "fn": fn, "tn": tn, "n_excluded": len(visits) - m,
                "accuracy": (tp + tn) / m if m else None, "precision": tp / (tp + fp) if tp + fp else None,
                "recall": tp / (tp + fn) if tp + fn else None,
                "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None}
        out.setdefault(alpha_key, {}).setdefault(group, {})[method] = fig
    return out


def test_every_report_figure_is_recomputable_from_the_routing_log(tmp_path):
    records = _records()
    built = report.build_report(records, POOL, COSTS, meta={"seed": 0})
    log.write_routing_log(tmp_path / report.ROUTING_LOG_FILE, records)
    written = report.read_report(report.write_report(tmp_path, built))
    assert written == built  # JSON round trip is lossless
    assert report.recompute_report(tmp_path / report.ROUTING_LOG_FILE, written) == written
    assert set(written["methods"]) == {"disrouter", "smallest", "largest", "random_uniform",
                                       "random_cost_matched", "oracle"}
    # Every figure again, from the log's lines by plain sums, not by the report's code.
    by_hand = _figures_by_plain_sums(tmp_path / report.ROUTING_LOG_FILE, POOL)
    assert sorted(by_hand) == written["alphas"]
    for key, groups in written["results"].items():
        assert sorted(groups) == sorted(by_hand[key]), key
        for group, methods in groups.items():
            assert sorted(methods) == sorted(by_hand[key][group]), (key, group)
            for method, figures in methods.items():
                lo, hi = figures.pop("utility_ci")  # a bootstrap interval: resampled, not a sum
                assert lo <= figures["utility"] <= hi, (key, group, method)
                if method != "disrouter":  # DiSRouter - method on the same queries: its mean is a sum
                    versus = figures.pop("vs_disrouter")
                    diff = methods["disrouter"]["utility"] - figures["utility"]
                    assert versus["mean"] == pytest.approx(diff, abs=1e-12) and versus["n"] == figures["n"]
                    assert versus["ci"][0] - 1e-12 <= diff <= versus["ci"][1] + 1e-12, (key, group, method)
                got, want = _flat(figures), _flat(by_hand[key][group][method])
                assert sorted(got) == sorted(want), (key, group, method)
                for path, value in want.items():
                    assert got[path] == (value if value is None else pytest.approx(value)), (key, group, method, path)
    # The hand table's DiSRouter at alpha 0.5, over all four queries, as a spot check in numbers.
    assert by_hand["0.5"]["all"]["disrouter"]["utility"] == pytest.approx(0.5 - 0.5 * 0.6)
    # every method gets the same oracle figures on the same queries
    for key in written["alphas"]:
        for group, methods in written["results"][key].items():
            assert len({m["oracle_utility"] for m in methods.values()}) == 1, (key, group)


def test_report_includes_router_records_on_their_own_queries():
    rows = outcome_rows(0.5)
    features_rd = np.array([[1.0, 1, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0]])
    router = routers.ClassifierRouter(POOL, COSTS, routers.ScorerConfig(steps=50)).fit(rows, features_rd)
    routed = router.route(rows[:2], features_rd[:2])  # evaluated on two queries only
    built = report.build_report(_records() + routed, POOL, COSTS)
    figures = built["results"]["0.5"]["all"]["classifier_router"]
    assert figures["n"] == 2
    # its oracle is the oracle of q1 and q2 only: both right, costs 0.1 and 0.9 -> 1 - 0.5 * 0.5
    assert figures["oracle_utility"] == pytest.approx(0.75)
    assert built["methods"][:2] == ["disrouter", "classifier_router"]


def test_write_report_never_silently_overwrites(tmp_path):
    first = report.build_report(cascade_log_alpha05(), POOL, COSTS, meta={"version": 1})
    second = report.build_report(cascade_log_alpha05(), POOL, COSTS, meta={"version": 2})
    path = report.write_report(tmp_path, first)
    report.write_report(tmp_path, first)  # identical: nothing to keep
    assert not list(tmp_path.glob("report.prev-*.json"))
    report.write_report(tmp_path, second)
    report.write_report(tmp_path, first)
    assert report.read_report(path)["meta"] == {"version": 1}
    assert json.loads((tmp_path / "report.prev-001.json").read_text())["meta"] == {"version": 1}
    assert json.loads((tmp_path / "report.prev-002.json").read_text())["meta"] == {"version": 2}
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_read_report_rejects_other_files(tmp_path):
    (tmp_path / "report.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="field 'format'"):
        report.read_report(tmp_path / "report.json")


def test_build_report_rejects_duplicates():
    records = cascade_log_alpha05()
    with pytest.raises(ValueError, match="duplicate record"):
        report.build_report(records + records[:1], POOL, COSTS)


def test_plots_are_valid_pngs(tmp_path, caplog):
    import matplotlib.image

    built = report.build_report(_records(), POOL, COSTS)
    with caplog.at_level("INFO"):
        paths = report.write_plots(tmp_path, built)
    assert not [r for r in caplog.records if r.name.startswith("matplotlib")]  # no notice per bar
    assert [p.name for p in paths] == list(report.PLOT_FILES)
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_summary_table_lists_every_method_and_value():
    built = report.build_report(_records(), POOL, COSTS)
    table = report.format_summary_table(built)
    assert "[all] alpha = 0.5" in table and "[out_of_domain] alpha = 0.2" in table
    for method in built["methods"]:
        assert method in table
    cascade_line = next(line for line in table.splitlines()[table.splitlines().index("[all] alpha = 0.5"):]
                        if line.startswith("disrouter"))
    # accuracy 0.5, cost 0.6, utility 0.2 [its interval], 40 % of the oracle, no difference to
    # itself, 1 forced refusal, 4 queries
    lo, hi = built["results"]["0.5"]["all"]["disrouter"]["utility_ci"]
    assert cascade_line.split() == ["disrouter", "0.500", "0.600", "0.200", f"[{lo:.3f},", f"{hi:.3f}]", "40.0",
                                    "-", "1", "4"]
