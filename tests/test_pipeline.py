"""``pipeline``: self-assessment of every stage (``assess_stages``) on scripted agents whose
replies are known, scored here by hand, and the table of every agent. (``train_agent`` as a whole,
full fine-tuning and LoRA, its resume after SIGKILL and the modularity of the pool:
tests/test_train.py, through the CLI.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from disrouter_jax import agents as agents_lib
from disrouter_jax import pipeline
from disrouter_jax.agents import AgentSpec
from disrouter_jax.tasks.registry import write_examples_jsonl
from tests.cascade import scripted_agents as sa
from tests.conftest import load_config_module

# ----------------------------------------------------------------------------- assess_stages

# (level, gold) of the held-out queries. Plain prompt: ladder agent 0 replies "7", agents 1 and 2
# reply "42", all three refuse Lthree. Scenario prompt (any alpha): agent k answers levels <= k.
HELDOUT = [(0, "7"), (1, "42"), (2, "42"), (3, "42"), (1, "7"), (0, "42")]
ALPHAS = ("0.2", "0.5", "0.8")


def scripted_config(spec_path: Path, data_dir: Path):
    config = load_config_module("rl_alpha05.py").get_config("toy")
    config.progress = False
    config.pool.toy = False
    config.pool.agents = [{"name": "agent0", "path": str(spec_path), "cost": 0.1}]
    config.data.dir = str(data_dir)
    config.data.eval_tasks = (sa.TASK_NAME,)
    config.assess.enabled = True
    config.assess.stages = ("base", "sft", "rl")
    config.assess.alphas = (0.2, 0.5, 0.8)
    config.assess.per_task = 0
    config.assess.max_new_tokens = 6
    config.assess.batch_size = 8
    return config


@pytest.fixture
def assessed_workdir(scripted_ladder, tmp_path):
    """agent0 as the pre-trained agent, ladder agents 1 and 2 standing in for its SFT and RL exports."""
    data = tmp_path / "data" / sa.TASK_NAME
    data.mkdir(parents=True)
    write_examples_jsonl(data / "test.jsonl", sa.make_queries(HELDOUT))
    workdir = tmp_path / "work"
    for stage, level in (("sft", 1), ("rl", 2)):
        shutil.copytree(scripted_ladder[level], workdir / "agents" / "agent0" / stage / "export")
    config = scripted_config(scripted_ladder[0], tmp_path / "data")
    return config, AgentSpec("agent0", str(scripted_ladder[0]), 0.1), workdir


def confusion(scores):
    return scores["tp"], scores["fp"], scores["fn"], scores["tn"]


def by_query(result, flags):
    """Per-query flags in q0..q5 order (the assessment lists them in the seeded held-out order)."""
    got = dict(zip(result["queries"]["keys"], flags))
    return [got[f"{sa.TASK_NAME}/q{i}"] for i in range(len(HELDOUT))]


def test_every_stage_is_scored_against_its_own_and_the_pretrained_plain_answers(assessed_workdir, monkeypatch):
    config, spec, workdir = assessed_workdir
    results = pipeline.assess_stages(config, spec, workdir)
    assert sorted(results) == ["base", "rl", "sft"]
    # Plain answers, by hand: agent 0 is right on q0 and q4 (gold 7), agents 1 and 2 on q1, q2, q5.
    base = results["base"]
    assert by_query(base, base["queries"]["plain_correct"]) == [True, False, False, False, True, False]
    assert results["base"]["alphas"] == {}  # the pre-trained agent: plain prompt only
    for stage in ("sft", "rl"):
        assert by_query(results[stage], results[stage]["queries"]["plain_correct"]) == \
            [False, True, True, False, False, True]
        assert results[stage]["plain_accuracy"] == 0.5
    # SFT (agent 1) refuses q2, q3; RL (agent 2) refuses q3 only, at every alpha.
    # Positive = refuse, label = "its plain answer is wrong" (own: q0 q3 q4; pre-trained: q1 q2 q3 q5).
    expected = {"sft": dict(refused=[False, False, True, True, False, False], own=(1, 1, 2, 2), pre=(2, 0, 2, 2),
                            answered_accuracy=2 / 4),
                "rl": dict(refused=[False, False, False, True, False, False], own=(1, 0, 2, 3), pre=(1, 0, 3, 2),
                           answered_accuracy=3 / 5)}
    for stage, want in expected.items():
        for a in ALPHAS:
            assert by_query(results[stage], results[stage]["queries"]["refused"][a]) == want["refused"], (stage, a)
            assert confusion(results[stage]["alphas"][a]) == want["own"], (stage, a)
            assert confusion(results[stage]["alphas_vs_reference"][a]) == want["pre"], (stage, a)
            assert results[stage]["alphas"][a]["answered_accuracy"] == pytest.approx(want["answered_accuracy"])
    for stage in ("base", "sft", "rl"):
        assert pipeline.assessment_path(spec, workdir, stage).is_file()

    table = pipeline.write_assessment_table(config, [spec], workdir)
    assert (workdir / "agents" / pipeline.ASSESSMENT_TABLE_FILE).read_text().endswith(table + "\n")
    rows = {line.split()[1]: line.split() for line in table.splitlines()[1:]}
    # sft: refusal rate 2/6; acc (tp + tn) / n = 3/6 and F1 2tp / (2tp + fp + fn) = 2/5; vs the
    # pre-trained answers 4/6 and 4/6; answers given right 2 of 4.
    assert rows["sft"][2:] == ["0.50"] + ["0.33"] * 3 + ["0.50/0.40"] * 3 + ["0.67/0.67"] * 3 + ["0.50"] * 3
    assert rows["rl"][2:] == ["0.50"] + ["0.17"] * 3 + ["0.67/0.50"] * 3 + ["0.50/0.40"] * 3 + ["0.60"] * 3
    assert rows["base"][2:5] == ["0.33", "-", "-"]

    # Cached: a second call loads no model; a stage that has not run is left out.
    monkeypatch.setattr(agents_lib, "load_agent", lambda *a, **k: pytest.fail("the cached assessment was not used"))
    assert pipeline.assess_stages(config, spec, workdir) == results
    shutil.rmtree(workdir / "agents" / "agent0" / "rl" / "export")
    assert sorted(pipeline.assess_stages(config, spec, workdir)) == ["base", "sft"]


def test_assessment_is_off_or_names_an_unknown_stage(assessed_workdir):
    config, spec, workdir = assessed_workdir
    config.assess.stages = ("base", "dpo")
    with pytest.raises(ValueError, match=r"unknown \['dpo'\]; choose from \('base', 'sft', 'rl'\)"):
        pipeline.assess_stages(config, spec, workdir)
    config.assess.enabled = False
    assert pipeline.assess_stages(config, spec, workdir) == {}
    assert not (workdir / "agents" / "agent0" / "base").exists()


# ----------------------------------------------------------------------------- stage optimizer


def test_each_stage_gets_the_optimizer_its_config_names():
    config = load_config_module("rl_alpha05.py").get_config("paper")
    sft = pipeline.optim_config(config.sft, config.sft.steps)
    assert (sft.learning_rate, sft.total_steps, sft.warmup_steps, sft.weight_decay, sft.max_grad_norm,
            sft.num_microbatches) == (1e-5, 1000, 50, 0.0, 1.0, 1)
    config.rl.warmup_steps, config.rl.grad_accum = 20, 4
    rl = pipeline.optim_config(config.rl, 5)  # fewer steps than warm-up: warm-up ends one step before the end
    assert (rl.learning_rate, rl.total_steps, rl.warmup_steps, rl.num_microbatches) == (1e-6, 5, 4, 4)
    assert pipeline.optim_config(config.rl, 1).warmup_steps == 0
