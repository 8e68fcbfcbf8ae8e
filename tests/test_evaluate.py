"""The evaluation CLI end to end on scripted agents: every output, every method, reuse, refusal to
mix settings, and the command line itself."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from disrouter_jax import evaluate, pipeline
from disrouter_jax.cascade import engine, evaluation, log, metrics, placement, replay, report, tables
from disrouter_jax.tasks.registry import write_examples_jsonl
from tests.cascade import scripted_agents as sa

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COSTS = (0.1, 0.5, 0.9)
EVAL = [(0, "7"), (1, "42"), (2, "42"), (3, "42"), (1, "5"), (0, "42")]
OOD = [(2, "42"), (3, "7"), (0, "7")]
TRAIN = [(i % 4, ("7", "42", "3")[i % 3]) for i in range(12)]
METHODS = ["disrouter", "classifier_router", "frugalgpt", "smallest", "largest", "random_uniform",
           "random_cost_matched", "oracle"]


def load_eval_config():
    spec = importlib.util.spec_from_file_location("eval_cascade", PROJECT_ROOT / "configs" / "eval_cascade.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("toy")


def write_data(root: Path) -> Path:
    data = root / "data"
    for task, split, rows in ((sa.TASK_NAME, "test", EVAL), (sa.TASK_NAME, "train", TRAIN),
                              (sa.OOD_TASK_NAME, "test", OOD)):
        (data / task).mkdir(parents=True, exist_ok=True)
        examples = sa.make_queries(rows, task=task)
        if split == "train":  # ids distinct from the evaluation split's
            examples = [dataclasses.replace(e, id=f"t{e.id}") for e in examples]
        write_examples_jsonl(data / task / f"{split}.jsonl", examples)
    return data


def scripted_config(pool_paths, data_dir):
    config = load_eval_config()
    config.progress = False
    config.pool.toy = False
    config.pool.agents = [{"name": f"agent{k}", "path": str(p), "cost": c}
                          for k, (p, c) in enumerate(zip(pool_paths, COSTS))]
    config.data.dir = str(data_dir)
    config.data.train_tasks = (sa.TASK_NAME,)
    config.data.eval_tasks = (sa.TASK_NAME,)
    config.data.out_of_domain = (sa.OOD_TASK_NAME,)
    config.data.eval_per_task = 0
    config.data.train_per_task = 0
    config.eval.train_agents = False
    config.eval.max_new_tokens = 12
    config.eval.batch_size = 4  # every batch the same size: one prefill and one decode program
    config.eval.router_steps = 50
    return config


@pytest.fixture(scope="module")
def setup(scripted_ladder, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    return scripted_ladder, write_data(root)


@pytest.fixture(scope="module")
def evaluated(setup, tmp_path_factory):
    pool_paths, data_dir = setup
    workdir = tmp_path_factory.mktemp("workdir")
    config = scripted_config(pool_paths, data_dir)
    return config, workdir, evaluation.run_evaluation(config, workdir)


def test_report_has_every_method_alpha_and_group(evaluated):
    config, workdir, built = evaluated
    assert json.loads((workdir / report.REPORT_FILE).read_text()) == built
    assert built["methods"] == METHODS
    assert built["alphas"] == ["0.2", "0.5", "0.8"]
    assert built["groups"][:3] == ["all", "in_domain", "out_of_domain"]
    for key in built["alphas"]:
        for group in ("all", "in_domain", "out_of_domain"):
            figures = built["results"][key][group]
            assert list(figures) == METHODS
            for f in figures.values():
                assert f["utility"] == pytest.approx(f["accuracy"] - float(key) * f["mean_cost"])
                assert f["oracle_utility"] is not None
    for name in report.PLOT_FILES:
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert built["meta"]["replay_agreement"] == {"0.2": 1.0, "0.5": 1.0, "0.8": 1.0}
    assert built["meta"]["refusal_tokens"] == {"agent0": 5, "agent1": 5, "agent2": 5}
    assert built["families"] == {"agent0": "qwen2", "agent1": "qwen2", "agent2": "qwen2"}
    # Every method's routing-log line names the family of each agent it visited.
    assert all(v.family == "qwen2" for r in log.read_routing_log(workdir / report.ROUTING_LOG_FILE) for v in r.visited)


def test_disrouter_routes_as_scripted_and_equals_the_replay(evaluated):
    _, workdir, built = evaluated
    records = log.read_routing_log(workdir / report.ROUTING_LOG_FILE)
    n = len(EVAL) + len(OOD)
    assert len(records) == len(METHODS) * 3 * n
    cascade = [r for r in records if r.method == "disrouter"]
    levels = {(sa.TASK_NAME, f"q{i}"): lv for i, (lv, _) in enumerate(EVAL)}
    levels |= {(sa.OOD_TASK_NAME, f"q{i}"): lv for i, (lv, _) in enumerate(OOD)}
    for record in cascade:
        assert [v.decision for v in record.visited] == sa.expected_route(levels[(record.dataset, record.query_id)], (0, 1, 2))
        # Refusals carry the forced (plain-prompt) answer's correctness for self-assessment.
        assert all(v.correct is not None for v in record.visited)
        assert record.domain == ("out_of_domain" if record.dataset == sa.OOD_TASK_NAME else "in_domain")
    outcomes = log.read_outcome_table(workdir / report.OUTCOMES_FILE)
    assert len(outcomes) == 3 * n
    replayed = {r.key: r for r in replay.replay_cascade(outcomes, ["agent0", "agent1", "agent2"], dict(
        zip(["agent0", "agent1", "agent2"], COSTS)))}
    assert all(replayed[r.key] == r for r in cascade)
    figures = built["results"]["0.5"]["all"]["disrouter"]
    assert figures["self_assessment"]["agent0"]["n_excluded"] == 0
    assert figures["forced_refusals"] == sum(lv == 3 for lv, _ in EVAL + OOD)


def test_baselines_use_plain_replies_and_the_oracle_is_exact(evaluated):
    _, workdir, built = evaluated
    plain = log.read_outcome_table(workdir / tables.PLAIN_OUTCOMES_FILE)
    # Plain prompt: every scripted agent answers all but Lthree, with its own number.
    def correct(agent_level, level, gold):
        return level != 3 and sa.ANSWERS[agent_level] == gold
    rows = EVAL + OOD
    oracle_correct = sum(any(correct(k, lv, gold) for k in range(3)) for lv, gold in rows)
    figures = built["results"]["0.2"]["all"]
    assert figures["oracle"]["accuracy"] == pytest.approx(oracle_correct / len(rows))
    assert figures["smallest"]["accuracy"] == pytest.approx(sum(correct(0, lv, g) for lv, g in rows) / len(rows))
    assert figures["largest"]["accuracy"] == pytest.approx(sum(correct(2, lv, g) for lv, g in rows) / len(rows))
    assert figures["smallest"]["mean_cost"] == pytest.approx(0.1)
    assert len(plain) == 3 * len(rows)
    fit = log.read_outcome_table(workdir / tables.ROUTER_TRAIN_FILE)
    assert {r.query_id for r in fit} == {f"tq{i}" for i in range(len(TRAIN))}
    assert set(built["meta"]["routers"]) >= {"classifier_router", "frugalgpt", "feature_agent"}


def test_assessor_table_scores_the_deciding_agents_on_every_query(evaluated):
    _, workdir, built = evaluated
    outcomes = log.read_outcome_table(workdir / report.OUTCOMES_FILE)
    assert list(built["assessors"]) == ["disrouter", "classifier_router"]
    for method, by_alpha in built["assessors"].items():
        assert list(by_alpha) == ["0.2", "0.5", "0.8"]
        for key, by_domain in by_alpha.items():
            assert list(by_domain["in_domain"]) == ["agent0", "agent1"]  # the last agent always answers
            assert all(s["n_scored"] == len(EVAL) for s in by_domain["in_domain"].values())
            assert all(s["n_scored"] == len(OOD) for s in by_domain["out_of_domain"].values())
    # DiSRouter's flags are its agents' own refusals under the scenario prompt.
    for key, by_domain in built["assessors"]["disrouter"].items():
        refused = sum(o.decision == log.REFUSE for r in outcomes if metrics.alpha_key(r.alpha) == key
                      and r.domain == "in_domain" for o in r.outcomes if o.agent == "agent0")
        scores = by_domain["in_domain"]["agent0"]
        assert scores["tp"] + scores["fp"] == refused


def test_rerun_reuses_everything_and_rejects_other_settings(evaluated, setup, monkeypatch):
    config, workdir, built = evaluated

    def no_generation(*args, **kwargs):
        raise AssertionError("a re-run must not generate again")

    monkeypatch.setattr(engine, "agent_replies", no_generation)
    monkeypatch.setattr(engine.Cascade, "run", no_generation)
    again = evaluation.run_evaluation(config, workdir)
    assert again == built
    assert not list(workdir.glob("report.prev-*.json"))  # identical report: left untouched
    changed = scripted_config(*setup)
    changed.eval.cost_mode = "cumulative"
    with pytest.raises(ValueError, match="different settings.*cost_mode"):
        evaluation.run_evaluation(changed, workdir)


def test_command_line_prints_the_summary(evaluated, setup, tmp_path, capsys, monkeypatch):
    # The real flag definitions and command, parsed on a private FlagValues in this process (a
    # subprocess would pay JAX start-up and compilation again); `python -m` only adds app.run.
    from absl import flags

    _, workdir, built = evaluated
    pool_paths, data_dir = setup
    config_file = tmp_path / "scripted_eval.py"
    config_file.write_text(
        "from pathlib import Path\n"
        "from tests import test_evaluate as t\n"
        "def get_config(s=None):\n"
        f"    return t.scripted_config([Path(p) for p in {[str(p) for p in pool_paths]!r}], Path({str(data_dir)!r}))\n")
    def parse(*args):
        argv = ["evaluate", f"--config={config_file}", f"--workdir={workdir}", *args]
        monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads --config.* overrides from sys.argv
        flag_values = evaluate.define_flags(flags.FlagValues())
        flag_values(argv)
        return flag_values

    assert evaluate.run_cli(parse("--config.eval.subpools=(('agent0', 'agent2'),)")) == built
    out = capsys.readouterr().out
    assert "[all] alpha = 0.5" in out and "disrouter" in out and "oracle" in out
    assert "share of answered queries per agent" in out
    # The configured sub-pool is replayed and printed after the full pool.
    assert "sub-pool agent0 + agent2" in out and (workdir / "replay" / "agent0+agent2" / report.REPORT_FILE).is_file()
    assert str(workdir / report.REPORT_FILE) in out
    # Replay mode from the command line: a sub-pool given as a tuple literal.
    replayed = evaluate.run_cli(parse("--config.eval.replay_pool=('agent1', 'agent2')"))
    assert replayed["agents"] == ["agent1", "agent2"]
    assert str(workdir / "replay" / "agent1+agent2" / report.REPORT_FILE) in capsys.readouterr().out


def test_replay_mode_rescores_any_subpool_without_models(evaluated, monkeypatch):
    config, workdir, built = evaluated
    monkeypatch.setattr(engine, "agent_replies", lambda *a, **k: pytest.fail("replay must not generate"))
    # The full pool with its own costs reproduces the evaluation's DiSRouter figures.
    full = config.copy_and_resolve_references()
    full.eval.replay_pool, full.eval.replay_costs = ("agent0", "agent1", "agent2"), "pool"
    again = evaluation.run_replay(full, workdir, full.eval.replay_pool)
    for key in again["alphas"]:
        assert again["results"][key]["all"]["disrouter"] == built["results"][key]["all"]["disrouter"]
    # A sub-pool: its last agent answers the plain prompt, as the engine would prompt it.
    for subpool, levels in ((("agent0", "agent1"), (0, 1)),):
        sub = config.copy_and_resolve_references()
        sub.eval.replay_pool = subpool
        got = evaluation.run_replay(sub, workdir, subpool)
        assert got["agents"] == list(subpool) and got["costs"] == {subpool[0]: 0.1, subpool[1]: 0.9}
        out = workdir / "replay" / "+".join(subpool)
        cascade = [r for r in log.read_routing_log(out / report.ROUTING_LOG_FILE) if r.method == "disrouter"]
        by_id = {(sa.TASK_NAME, f"q{i}"): lv for i, (lv, _) in enumerate(EVAL)}
        by_id |= {(sa.OOD_TASK_NAME, f"q{i}"): lv for i, (lv, _) in enumerate(OOD)}
        assert len(cascade) == 3 * len(by_id)
        for record in cascade:
            assert [v.decision for v in record.visited] == sa.expected_route(by_id[(record.dataset, record.query_id)], levels)
        assert set(got["methods"]) == set(METHODS) and (out / report.PLOT_FILES[0]).exists()
        # The assessors of the sub-pool: only its deciding agent, judged on the sub-pool's rows.
        for method in ("disrouter", "classifier_router"):
            assert list(got["assessors"][method]["0.5"]["in_domain"]) == [subpool[0]]
        # Its scenario replies are the full pool's: the same self-assessment as in the full pool.
        assert got["assessors"]["disrouter"] == {
            key: {domain: {subpool[0]: scores[subpool[0]]} for domain, scores in by_domain.items()}
            for key, by_domain in built["assessors"]["disrouter"].items()}


def test_split_devices_is_disjoint_and_gives_spares_to_big_agents():
    assert placement.split_devices(8, 3) == [(0, 1), (2, 3, 4), (5, 6, 7)]
    assert placement.split_devices(8, 5) == [(0,), (1,), (2, 3), (4, 5), (6, 7)]
    assert placement.split_devices(1, 3) == [(0,), (0,), (0,)]


def test_baselines_and_forced_answers_come_from_the_pool_before_training(setup, tmp_path):
    """With a "trained" pool that differs from the base pool, the cascade runs the trained agents
    while Smallest and the forced answers use the base agents' plain replies (eval.baseline_agents)."""
    pool_paths, data_dir = setup
    config = scripted_config(pool_paths, data_dir)
    config.eval.routers = ()
    base_specs = pipeline.ensure_pool(config, tmp_path)
    # "Trained" agent0 behaves like scripted level 1 (answers 42, refuses less).
    trained = [dataclasses.replace(base_specs[0], path=str(pool_paths[1]))] + list(base_specs[1:])
    built = evaluation.run_evaluation(config, tmp_path, specs=trained, base_specs=base_specs)
    rows = EVAL + OOD
    figures = built["results"]["0.2"]["all"]
    smallest_base = sum(lv != 3 and sa.ANSWERS[0] == gold for lv, gold in rows) / len(rows)
    smallest_trained = sum(lv != 3 and sa.ANSWERS[1] == gold for lv, gold in rows) / len(rows)
    assert smallest_base != smallest_trained
    assert figures["smallest"]["accuracy"] == pytest.approx(smallest_base)
    assert (tmp_path / "eval" / "base_replies").is_dir()
    cascade = [r for r in log.read_routing_log(tmp_path / report.ROUTING_LOG_FILE) if r.method == "disrouter"]
    queries = {(sa.TASK_NAME, f"q{i}"): row for i, row in enumerate(EVAL)}
    queries |= {(sa.OOD_TASK_NAME, f"q{i}"): row for i, row in enumerate(OOD)}
    refused_where_forced_answers_differ = 0
    for record in cascade:
        level, gold = queries[(record.dataset, record.query_id)]
        first = record.visited[0]
        assert first.decision == sa.expected_route(level, (1, 1, 2))[0]  # the trained agent decides
        if first.decision == "refuse":  # ... and the base agent's plain answer scores the refusal
            assert first.correct == (level != 3 and gold == sa.ANSWERS[0])
            refused_where_forced_answers_differ += level != 3 and gold != sa.ANSWERS[0]
    assert refused_where_forced_answers_differ > 0
    assert built["meta"]["baseline_agents"] == "base"


def test_sft_ablation_runs_the_cascade_with_the_agents_as_sft_left_them(setup, tmp_path):
    """"disrouter_sft" routes with each non-last agent's SFT export (here: agent0's export behaves
    like scripted level 1), scored beside the cascade of the evaluated agents."""
    import shutil

    pool_paths, data_dir = setup
    config = scripted_config(pool_paths, data_dir)
    config.eval.routers = ()
    for name, source in (("agent0", pool_paths[1]), ("agent1", pool_paths[1])):
        shutil.copytree(source, tmp_path / "agents" / name / "sft" / "export")
    built = evaluation.run_evaluation(config, tmp_path)
    assert report.SFT_ONLY in built["methods"]
    assert "vs_disrouter" in built["results"]["0.5"]["all"][report.SFT_ONLY]
    records = log.read_routing_log(tmp_path / report.ROUTING_LOG_FILE)
    levels = {(sa.TASK_NAME, f"q{i}"): lv for i, (lv, _) in enumerate(EVAL)}
    levels |= {(sa.OOD_TASK_NAME, f"q{i}"): lv for i, (lv, _) in enumerate(OOD)}
    by_method = {m: [r for r in records if r.method == m] for m in ("disrouter", report.SFT_ONLY)}
    assert len(by_method[report.SFT_ONLY]) == len(by_method["disrouter"]) == 3 * len(levels)
    for method, ladder in (("disrouter", (0, 1, 2)), (report.SFT_ONLY, (1, 1, 2))):
        for record in by_method[method]:
            assert [v.decision for v in record.visited] == sa.expected_route(
                levels[(record.dataset, record.query_id)], ladder), method
    assert (tmp_path / "eval" / "sft_replies").is_dir()
    # An agent without an SFT export: the ablation is skipped, the evaluation is not.
    shutil.rmtree(tmp_path / "agents" / "agent1")
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "agents", other / "agents")
    assert report.SFT_ONLY not in evaluation.run_evaluation(config, other)["methods"]


def test_share_table_lists_every_agent_per_alpha(evaluated):
    _, _, built = evaluated
    lines = report.format_share_table(built).splitlines()
    assert lines[1].split() == ["alpha", "agent0", "agent1", "agent2"]
    for key, line in zip(built["alphas"], lines[2:]):
        cells = line.split()
        shares = built["results"][key]["in_domain"]["disrouter"]["final_share"]
        assert cells[0] == key and [float(c) for c in cells[1:]] == pytest.approx(
            [shares[a] for a in ("agent0", "agent1", "agent2")], abs=5e-4)


def test_agents_data_and_workdir_on_an_object_store_give_the_local_run_files(evaluated, setup, gcs_emulator, monkeypatch,
                                                                            tmp_path):
    """The same evaluation with the agents, the task files and the workdir on the emulated GCS:
    the agents load from the bucket (through the local cache), every output lands in the bucket,
    the report equals the local run's, the tables and the routing log have the same bytes, and no
    local path is named after the URL."""
    from disrouter_jax import storage
    from tests.storage.emulator import BUCKET, use_in_this_process

    config, workdir, built = evaluated
    pool_paths, data_dir = setup
    use_in_this_process(gcs_emulator.url, monkeypatch)
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    base = f"gs://{BUCKET}/evaluate"
    for k, path in enumerate(pool_paths):
        storage.upload_tree(path, f"{base}/pool/{k}", last=("config.json",))
    storage.upload_tree(data_dir, f"{base}/data")
    remote = scripted_config([f"{base}/pool/{k}" for k in range(len(pool_paths))], f"{base}/data")
    assert evaluation.run_evaluation(remote, f"{base}/run") == built

    run = storage.path(f"{base}/run")
    # The module's replay tests add sub-pool reports under the shared local workdir (replay/);
    # the evaluation itself, local or remote, writes none with this config.
    local = {str(p.relative_to(workdir)) for p in workdir.rglob("*")
             if p.is_file() and p.relative_to(workdir).parts[0] != "replay"}
    in_bucket = {str(p)[len(str(run)) + 1:] for p in _walk(run)}
    assert in_bucket == local
    for name in (report.REPORT_FILE, report.ROUTING_LOG_FILE, report.OUTCOMES_FILE, tables.PLAIN_OUTCOMES_FILE,
                 tables.ROUTER_TRAIN_FILE, "eval/replies/agent0.jsonl", "eval/cascade_stats.json"):
        assert (run / name).read_bytes() == (workdir / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "cwd").iterdir()) == []


def _walk(path):
    for child in path.iterdir():
        if child.is_dir():
            yield from _walk(child)
        else:
            yield child
