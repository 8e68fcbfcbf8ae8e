"""Self-Awareness Training end to end on the reduced toy pool (tiny step counts), and the paper's
modularity: every agent is trained on its own, so retraining one leaves every other agent's files
as they were."""

import hashlib
import shutil
from pathlib import Path

from disrouter_jax import agents as agents_lib
from disrouter_jax import pipeline
from tests.toy.tiny_sat import tiny_sat_config


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_training_writes_one_directory_per_agent_and_retraining_one_touches_no_other(reduced_pool, tmp_path):
    config = tiny_sat_config(reduced_pool.root, train_per_task=12, sft_steps=3, rl_steps=2)
    workdir = tmp_path / "work"
    specs = pipeline.ensure_trained_pool(config, workdir)
    names = [a.name for a in reduced_pool.agents]
    trained = names[:-1]  # the last agent always answers and is not trained
    assert [s.name for s in specs] == names
    for spec in specs[:-1]:
        assert Path(spec.path) == pipeline.final_dir(workdir, spec.name)
        agent = agents_lib.load_agent(spec, dtype="float32", param_dtype="float32")  # a loadable HF directory
        assert agent.spec.name == spec.name
        for stage in ("labels", "sft", "rl"):
            assert (workdir / "agents" / spec.name / stage).is_dir(), (spec.name, stage)
    assert specs[-1].path == str(reduced_pool.agents[-1].path)  # untrained: the pool's own directory
    assert sorted(p.name for p in (workdir / "agents").iterdir() if p.is_dir()) == sorted(trained)

    # Replace the first agent by a retrained one: the others' files stay byte for byte.
    replaced, kept = trained[0], trained[1:]
    before = {name: _digest(workdir / "agents" / name) for name in kept}
    shutil.rmtree(workdir / "agents" / replaced)
    again = pipeline.ensure_trained_pool(config, workdir)
    assert (pipeline.final_dir(workdir, replaced) / "config.json").is_file()
    assert [s.path for s in again] == [s.path for s in specs]
    assert {name: _digest(workdir / "agents" / name) for name in kept} == before
