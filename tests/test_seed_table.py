"""The multi-seed table: means and per-seed figures from real report.json files."""

import json
import statistics

import numpy as np
import pytest

from disrouter_jax import seed_table
from disrouter_jax.cascade import assessors, replay, report
from tests.cascade.hand_tables import COSTS, POOL, outcome_rows


def _write_report(directory, seed):
    rows = outcome_rows(0.5) + outcome_rows(0.2)
    records = replay.replay_all(rows, POOL, COSTS, seed=seed)
    # A classifier that trusts agent A on a different query per seed: its F1 varies with the seed.
    capable_ra = np.ones((len(rows), len(POOL)), dtype=bool)
    capable_ra[seed % 2, 0] = False
    judged = {"disrouter": assessors.self_assessors(rows, POOL[:-1]),
              "classifier_router": assessors.external_assessors(rows, POOL[:-1], POOL, capable_ra)}
    directory.mkdir(parents=True)
    return report.write_report(directory, report.build_report(records, POOL, COSTS, meta={"seed": seed},
                                                              assessors=judged))


@pytest.fixture
def reports(tmp_path):
    return [_write_report(tmp_path / f"seed_{s}", s) for s in (0, 1, 2)]


def test_table_holds_every_seed_and_their_mean(tmp_path, reports, capsys):
    assert seed_table.main(["--out", str(tmp_path / "out")] + [str(p) for p in reports]) == 0
    table = json.loads((tmp_path / "out" / "seeds.json").read_text())
    assert table["seeds"] == ["0", "1", "2"]
    originals = [report.read_report(p) for p in reports]
    checked = 0
    for alpha, groups in table["results"].items():
        for group, methods in groups.items():
            for method, row in methods.items():
                cells = [r["results"][alpha][group][method] for r in originals]
                assert row["utility"] == [c["utility"] for c in cells]
                assert row["utility_mean"] == pytest.approx(statistics.fmean(row["utility"]))
                if method != "disrouter":
                    diffs = [c["vs_disrouter"] for c in cells]
                    assert row["vs_disrouter"] == [d["mean"] for d in diffs]
                    assert row["seeds_ci_above_zero"] == sum(d["ci"][0] > 0 for d in diffs)
                checked += 1
    assert checked and set(table["results"]) == {"0.2", "0.5"}
    # The random baselines draw from the seed: their figures differ between seeds.
    assert len(set(table["results"]["0.5"]["in_domain"]["random_uniform"]["utility"])) > 1
    printed = capsys.readouterr().out
    assert "[in_domain] utility, mean over seeds 0, 1, 2" in printed and "random_uniform" in printed
    markdown = (tmp_path / "out" / "seeds.md").read_text()
    assert "| method | alpha=0.2 | alpha=0.5 |" in markdown
    # Assessor F1 per agent: every seed's figure and the mean.
    f1 = table["assessors"]["classifier_router"]["0.5"]["in_domain"]["A"]
    assert f1["f1"] == [r["assessors"]["classifier_router"]["0.5"]["in_domain"]["A"]["f1"] for r in originals]
    assert len(set(f1["f1"])) > 1 and f1["f1_mean"] == pytest.approx(statistics.fmean(f1["f1"]))
    assert table["assessors"]["disrouter"]["0.5"]["in_domain"]["A"]["f1"] == [1.0, 1.0, 1.0]
    assert "| agent | disrouter@0.2 | disrouter@0.5 |" in markdown and "assessor F1" in printed


def test_a_bad_report_names_the_file_and_writes_nothing(tmp_path, reports, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something/else"}))
    assert seed_table.main(["--out", str(tmp_path / "out"), str(reports[0]), str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "'format'" in err
    assert not (tmp_path / "out").exists()
