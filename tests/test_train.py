"""The training CLI as a user runs it: ``python -m disrouter_jax.train`` in its own process, label
-> SFT -> RL -> export for every agent of the reduced toy pool, and real faults: the process is
killed with SIGKILL (no handler, no cleanup) at a random step of each stage, rerun, and the agents
it finally exports must be byte-identical to those of an uninterrupted run.

Every run shares one persistent XLA compilation cache (``JAX_COMPILATION_CACHE_DIR``), so only the
first one compiles; the executables are the ones a fresh compilation gives (the uninterrupted run
compiles them itself), so the cache changes the time, not the bytes.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from disrouter_jax.training.metrics import read_metrics
from tests.conftest import child_xla_flags, load_config_module

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TRAINED = ("toy-xs", "toy-s")  # the reduced pool's agents but the last, which always answers
PER_TASK = 4
NUM_QUERIES = PER_TASK * len(load_config_module("common.py").TOY_IN_DOMAIN)
CHUNK_SIZE = 2
SFT_STEPS = 6
RL_STEPS = 4
OVERRIDES = {
    "pool.reduced": True,
    "data.train_per_task": PER_TASK,
    "label.num_samples": 8,  # 2 queries x 8 samples: the 16 rows of an RL step's 4 prompts x 4
    "label.chunk_size": CHUNK_SIZE,
    "sft.steps": SFT_STEPS,
    "sft.batch_size": 4,
    "sft.warmup_steps": 1,
    "sft.length_buckets": (192,),  # one shape per agent: one SFT and one RL step program
    "rl.steps": RL_STEPS,
    "rl.prompts_per_step": 4,
    "rl.group_size": 4,
    "rl.warmup_steps": 1,
    "rl.temperature": 2.0,  # varied groups: every step has non-zero advantages to learn from
    "assess.enabled": False,
    "checkpoint.every_steps": 1,  # a checkpoint (asynchronous) after every step: a kill lands mid-write too
    "log_every_steps": 1,  # one metrics line per step: the kill markers
    "progress": False,
}
LORA = {"lora.enabled": True}
LORA_MODULES = ("q", "k", "v", "o", "gate", "up", "down")  # the default lora.targets
TIMING_KEYS = ("step_seconds", "tokens_per_second")
RUN_TIMEOUT_S = 600
SFT_STEPS_2PROC, RL_STEPS_2PROC = 2, 2  # the 2-process runs check who writes what, not what is learnt


def _env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # One CPU device, as a user's laptop run has (the test session's 8 simulated ones are not
    # inherited), and the session's O0 LLVM: compiling is two thirds of a first run's CPU time and
    # O0 nearly halves it (the later runs load the programs from the cache and run ~10% slower);
    # every run of the module has the same flags, and what is checked are equalities between them.
    env.update(XLA_FLAGS=child_xla_flags(), JAX_PLATFORMS="cpu", PYTHONPATH=str(PROJECT_ROOT), PYTHONUNBUFFERED="1",
               JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


class Trainer:
    """Launches the CLI on one workdir; every launch gets its own log files."""

    def __init__(self, pool_dir: Path, cache_dir: Path, logs: Path):
        self.pool_dir, self.env, self.logs = pool_dir, _env(cache_dir), logs
        self.launches = 0

    def command(self, workdir: Path, extra: dict | None = None) -> list[str]:
        return [sys.executable, "-m", "disrouter_jax.train", "--config", "configs/rl_alpha05.py:toy",
                f"--workdir={workdir}", f"--config.pool.dir={self.pool_dir}",
                *(f"--config.{k}={v}" for k, v in {**OVERRIDES, **(extra or {})}.items())]

    def config(self, extra: dict | None = None):
        """The ConfigDict those flags give, built in this process."""
        config = load_config_module("rl_alpha05.py").get_config("toy")
        load_config_module("common.py").apply_overlay(config, {**OVERRIDES, "pool.dir": str(self.pool_dir), **(extra or {})})
        return config

    def start(self, workdir: Path, extra: dict | None = None):
        self.launches += 1
        out = open(self.logs / f"run{self.launches}.out", "w")
        err = open(self.logs / f"run{self.launches}.err", "w")
        proc = subprocess.Popen(self.command(workdir, extra), cwd=PROJECT_ROOT, env=self.env, stdout=out, stderr=err)
        proc.log_files = (out, err)
        return proc

    def finish(self, proc, timeout=RUN_TIMEOUT_S) -> tuple[int, str, str]:
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for f in proc.log_files:
                f.close()
        out, err = (Path(f.name).read_text() for f in proc.log_files)
        return rc, out, err

    def run(self, workdir: Path) -> tuple[str, str]:
        rc, out, err = self.finish(self.start(workdir))
        assert rc == 0, f"train exited {rc}:\n{err[-4000:]}"
        return out, err

    def kill_when(self, workdir: Path, marker, what: str) -> str:
        """Starts a run, sends SIGKILL as soon as ``marker()`` holds; returns its stderr."""
        proc = self.start(workdir)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not marker():
            if proc.poll() is not None or time.monotonic() > deadline:
                rc, _, err = self.finish(proc, timeout=1)
                pytest.fail(f"the run ended (rc {rc}) before {what}:\n{err[-4000:]}")
            time.sleep(0.005)
        proc.kill()
        rc, _, err = self.finish(proc)
        assert rc == -9, (what, rc)
        return err


def _checkpointed(stage_dir: Path, step: int):
    """The marker of step ``step`` of a stage: its checkpoint is finalized (Orbax renames the
    step's temporary directory when the asynchronous write is complete)."""
    return lambda: (stage_dir / "checkpoints" / str(step)).is_dir()


def _resumed_at(log: str, stage: str) -> int:
    found = re.findall(rf"{TRAINED[0]} {stage}: resuming at step (\d+)", log)
    assert len(found) == 1, (stage, log[-4000:])
    return int(found[0])


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _outputs(workdir: Path) -> dict[str, dict[str, str]]:
    """What must not depend on interruptions: the exported agents and the labels, file by file."""
    out = {}
    for name in TRAINED:
        agent = workdir / "agents" / name
        for sub in ("final", "sft/export", "rl/export"):
            out[f"{name}/{sub}"] = _digests(agent / sub)
        out[f"{name}/labels"] = _digests(agent / "labels")
    return out


def _metrics(workdir: Path) -> dict[str, list[dict]]:
    return {f"{name}/{stage}": [{k: v for k, v in r.items() if k not in TIMING_KEYS}
                                for r in read_metrics(workdir / "agents" / name / stage / "metrics.jsonl")]
            for name in TRAINED for stage in ("sft", "rl")}


@pytest.fixture(scope="module")
def trainer(reduced_pool, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli")
    pool_dir = root / "pool"  # a copy: the runs must not write into the session's pool
    shutil.copytree(reduced_pool.root, pool_dir)
    (root / "logs").mkdir()
    return Trainer(pool_dir, root / "xla_cache", root / "logs")


@pytest.fixture(scope="module")
def runs(trainer, tmp_path_factory):
    """Two uninterrupted runs side by side (the test process only waits): full fine-tuning, and
    LoRA as the README runs it (``--config.lora.enabled=True``)."""
    root = tmp_path_factory.mktemp("runs")
    procs = {"full": trainer.start(root / "full"), "lora": trainer.start(root / "lora", LORA)}
    results = {}
    try:
        for name, proc in procs.items():
            rc, out, err = trainer.finish(proc)
            assert rc == 0, f"the {name} run exited {rc}:\n{err[-4000:]}"
            results[name] = (root / name, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                trainer.finish(proc, timeout=1)
    return results


@pytest.fixture(scope="module")
def uninterrupted(runs):
    return runs["full"]


def test_the_cli_labels_fine_tunes_reinforces_and_exports_every_agent(trainer, uninterrupted, reduced_pool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir, out, _ = uninterrupted
    costs = {a.name: a.cost for a in reduced_pool.agents}
    lines = out.strip().splitlines()
    assert lines[:2] == [f"{n:24s} cost={costs[n]:.2f}  {workdir / 'agents' / n / 'final'}" for n in TRAINED]
    last = reduced_pool.agents[-1]
    # Untrained: the pool's own directory.
    assert lines[2:] == [f"{last.name:24s} cost={last.cost:.2f}  {trainer.pool_dir / 'agents' / last.name}"]
    assert sorted(p.name for p in (workdir / "agents").iterdir()) == sorted(TRAINED)
    for name in TRAINED:
        agent = workdir / "agents" / name
        labels = [json.loads(line) for line in (agent / "labels" / "labels.jsonl").read_text().splitlines()]
        assert len(labels) == NUM_QUERIES and all(r["num_samples"] == 8 for r in labels)
        assert {r["p_correct"] * 8 for r in labels} <= set(range(9))
        assert not list((agent / "labels").glob("labels.part*"))  # merged, parts removed
        summary = json.loads((agent / "labels" / "summary.json").read_text())
        assert summary["queries"] == NUM_QUERIES
        assert summary["mean_p_correct"] == pytest.approx(sum(r["p_correct"] for r in labels) / NUM_QUERIES)
        for stage, steps in (("sft", SFT_STEPS), ("rl", RL_STEPS)):
            assert (agent / stage / "DONE").read_text() == f"{steps}\n"
            assert [r["step"] for r in read_metrics(agent / stage / "metrics.jsonl")] == list(range(1, steps + 1))
        for record in read_metrics(agent / "rl" / "metrics.jsonl"):  # rollout metrics (rl_stage), one alpha
            assert record["reward_mean/alpha_0.5"] == record["reward_mean"], record
            assert record["refusal_rate/alpha_0.5"] == record["refusal_rate"], record
        # The final agent is the RL export, a Hugging Face directory transformers loads and runs.
        assert _digests(agent / "final") == _digests(agent / "rl" / "export")
        assert _digests(agent / "sft" / "export") != _digests(agent / "rl" / "export")
        model = AutoModelForCausalLM.from_pretrained(agent / "final")
        tokenizer = AutoTokenizer.from_pretrained(agent / "final")
        assert model.config.vocab_size >= len(tokenizer)


def test_kill_9_at_a_random_step_of_each_stage_then_rerun_exports_the_same_bytes(trainer, uninterrupted, tmp_path,
                                                                                 object_store_rerun):
    # `object_store_rerun` (the object-store test's runs) goes on in a thread meanwhile.
    seed = int(os.environ.get("DISROUTER_KILL_SEED", random.SystemRandom().randrange(2**31)))
    rng = random.Random(seed)
    where = f"(DISROUTER_KILL_SEED={seed} reproduces these kill points)"
    workdir = tmp_path / "work"
    first = workdir / "agents" / TRAINED[0]
    # Each kill leaves at least two more units of the stage to do, so it lands inside the stage.
    chunk = rng.randrange(NUM_QUERIES // CHUNK_SIZE - 2)
    sft_step = rng.randint(1, SFT_STEPS - 2)
    rl_step = rng.randint(1, RL_STEPS - 2)

    trainer.kill_when(workdir, lambda: (first / "labels" / f"labels.part{chunk:05d}.jsonl").is_file(),
                      f"label chunk {chunk} {where}")
    assert not (first / "labels" / "labels.jsonl").exists(), f"the kill missed the labelling stage {where}"

    err = trainer.kill_when(workdir, _checkpointed(first / "sft", sft_step), f"SFT step {sft_step} {where}")
    assert "labelling resumed" in err and not (first / "sft" / "DONE").exists(), where

    err = trainer.kill_when(workdir, _checkpointed(first / "rl", rl_step), f"RL step {rl_step} {where}")
    assert _resumed_at(err, "sft") >= sft_step and not (first / "rl" / "DONE").exists(), where

    _, err = trainer.run(workdir)
    assert _resumed_at(err, "rl") >= rl_step, where

    reference, _, _ = uninterrupted
    assert _outputs(workdir) == _outputs(reference), where
    assert _metrics(workdir) == _metrics(reference), where


def test_retraining_one_agent_rebuilds_it_exactly_and_rewrites_no_other_file(trainer, uninterrupted, tmp_path):
    """The paper's modularity: every agent is trained on its own. Delete one agent's directory and
    run the same command again: that agent is rebuilt byte for byte, the finished one is reused
    and not one of its files (logs and TensorBoard events included) is rewritten."""
    reference, _, _ = uninterrupted
    workdir = tmp_path / "work"
    shutil.copytree(reference, workdir)
    before = _digests(workdir)
    replaced, kept = TRAINED
    shutil.rmtree(workdir / "agents" / replaced)
    trainer.run(workdir)
    after = _digests(workdir)
    assert {k: v for k, v in after.items() if not k.startswith(f"agents/{replaced}/")} == \
           {k: v for k, v in before.items() if not k.startswith(f"agents/{replaced}/")}
    assert _outputs(workdir) == _outputs(reference)


def test_lora_trains_adapters_only_and_transformers_runs_the_merged_export_as_trained(trainer, runs, reduced_pool):
    """Each stage's checkpoint holds the adapters it trained (on top of the agent it started
    from); the merged export that transformers loads gives that model's logits."""
    import torch
    from flax import nnx
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from disrouter_jax import agents as agents_lib
    from disrouter_jax import pipeline
    from disrouter_jax.agents import AgentSpec
    from disrouter_jax.training.checkpoint import TrainCheckpointer
    from disrouter_jax.training.lora import LoRAParam

    workdir = runs["lora"][0]
    config = trainer.config(LORA)
    ids = np.random.default_rng(0).integers(0, 500, (2, 9))
    for pool_agent in reduced_pool.agents[:len(TRAINED)]:
        agent_dir = workdir / "agents" / pool_agent.name
        starts = {"sft": trainer.pool_dir / "agents" / pool_agent.name, "rl": agent_dir / "sft" / "export"}
        for stage, start in starts.items():
            agent = agents_lib.load_agent(AgentSpec(pool_agent.name, str(start), pool_agent.cost),
                                          dtype=config.dtype, param_dtype=config.param_dtype)
            template = pipeline.train_state_for(config, agent.model,
                                                pipeline.optim_config(config[stage], config[stage].steps))
            with TrainCheckpointer(agent_dir / stage / "checkpoints") as ckpt:
                restored = ckpt.restore(template)
            assert restored.step == config[stage].steps
            trained = restored.state.model()
            # Only adapters were trained and checkpointed, and training moved them (B starts at 0).
            flat = list(nnx.to_flat_state(restored.state.params))
            assert {type(v) for _, v in flat} == {LoRAParam}
            assert any(np.abs(np.asarray(v.get_value())).max() > 0 for path, v in flat if path[-1] == "b_ro")
            hf = AutoModelForCausalLM.from_pretrained(agent_dir / stage / "export", dtype=torch.float32).eval()
            with torch.no_grad():
                hf_logits = hf(torch.as_tensor(ids)).logits.numpy()
            np.testing.assert_allclose(hf_logits, np.asarray(trained(ids)), atol=1e-4, err_msg=(pool_agent.name, stage))
        assert _digests(agent_dir / "final") == _digests(agent_dir / "rl" / "export")
        before = load_file(trainer.pool_dir / "agents" / pool_agent.name / "model.safetensors")
        after = load_file(agent_dir / "final" / "model.safetensors")
        assert sorted(before) == sorted(after)
        targets = [k for k in before if k.endswith(".weight") and any(f".{t}_proj." in k for t in LORA_MODULES)]
        assert len(targets) == len(LORA_MODULES) * hf.config.num_hidden_layers
        for name, tensor in before.items():
            if name in targets:  # base + scaled low-rank product: every targeted projection moved
                assert not np.array_equal(after[name], tensor), (pool_agent.name, name)
            else:  # embeddings, norms, biases: not trained, written back bit for bit
                np.testing.assert_array_equal(after[name], tensor, err_msg=f"{pool_agent.name} {name}")


@pytest.fixture(scope="module")
def object_store_rerun(trainer, gcs_emulator, tmp_path_factory):
    """The CLI with ``--workdir gs://...`` and the pool in the bucket too, on the emulated GCS:
    killed (SIGKILL) once an SFT checkpoint is in the bucket, then rerun to the end; started in a
    thread of its own when the kill -9 test starts (both are one CLI process at a time, each
    keeping one of the two cores busy), checked by the object-store test. A future of
    (url, local cwd of the runs, the rerun's stderr)."""
    from disrouter_jax import storage
    from tests.storage.emulator import BUCKET, env_for, use_in_this_process

    root = tmp_path_factory.mktemp("object_store_run")
    patch = pytest.MonkeyPatch()
    use_in_this_process(gcs_emulator.url, patch)
    url, pool_url = f"gs://{BUCKET}/train-run", f"gs://{BUCKET}/train-pool"
    storage.upload_tree(trainer.pool_dir, pool_url, last=("pool.json",))
    cwd = root / "cwd"
    cwd.mkdir()
    env = {**trainer.env, **env_for(gcs_emulator.url), storage.CACHE_ENV: str(root / "cache")}
    command = [str(PROJECT_ROOT / arg) if arg.startswith("configs/") else arg  # cwd is not the checkout
               for arg in trainer.command(url) if not arg.startswith("--config.pool.dir=")]
    # Checkpoints every 3 steps: every put is a request to the emulator; the exports do not depend on it.
    command += [f"--config.pool.dir={pool_url}", "--config.checkpoint.every_steps=3"]

    def launch(name):
        out, err = open(root / f"{name}.out", "w"), open(root / f"{name}.err", "w")
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err)
        proc.log_files = (out, err)
        return proc

    def sequence() -> tuple[str, Path, str]:
        committed = storage.path(f"{url}/agents/{TRAINED[0]}/sft/checkpoints/3/commit_success.txt")
        proc = launch("killed")
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not committed.exists():
            assert proc.poll() is None and time.monotonic() < deadline, trainer.finish(proc, timeout=1)[2][-4000:]
            time.sleep(0.2)
        proc.kill()
        assert trainer.finish(proc)[0] == -9
        rc, _, err = trainer.finish(launch("rerun"))
        assert rc == 0, err[-4000:]
        return url, cwd, err

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="object-store-run") as pool:
        yield pool.submit(sequence)
    patch.undo()


def test_a_workdir_on_an_object_store_resumes_after_kill_9_and_holds_the_local_runs_files(
        uninterrupted, object_store_rerun):
    """`object_store_rerun` resumed from the SFT checkpoint in the bucket; then every file of the
    local uninterrupted run is in the bucket with the same bytes (metrics without their timings),
    and nothing was written to a local path named after the URL."""
    import fsspec

    url, cwd, err = object_store_rerun.result()
    assert _resumed_at(err, "sft") == 3

    assert sorted(os.listdir(cwd)) == []  # no "gs:" directory, nothing else either
    reference, _, _ = uninterrupted
    fs, root = fsspec.core.url_to_fs(url)
    in_bucket = {key.split(f"{root}/", 1)[1] for key in fs.find(root)}
    local = {str(p.relative_to(reference)) for p in reference.rglob("*") if p.is_file()}
    skip = ("/checkpoints/", "/tensorboard/", "metrics.jsonl")  # per-run: step timings, event file names
    kept = lambda names: {n for n in names if not any(s in n for s in skip)}  # noqa: E731
    assert kept(in_bucket) == kept(local)
    for name in sorted(kept(local)):
        assert fs.cat_file(f"{root}/{name}") == (reference / name).read_bytes(), name
    for name in TRAINED:
        for stage, steps in (("sft", SFT_STEPS), ("rl", RL_STEPS)):
            remote = [{k: v for k, v in r.items() if k not in TIMING_KEYS}
                      for r in read_metrics(f"{url}/agents/{name}/{stage}/metrics.jsonl")]
            assert remote == _metrics(reference)[f"{name}/{stage}"], (name, stage)
            assert f"agents/{name}/{stage}/checkpoints/{steps}/commit_success.txt" in in_bucket


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_two_processes_via_local_sh_train_a_fresh_workdir_process_0_writing_the_shared_files(
        where, trainer, gcs_emulator, tmp_path, monkeypatch):
    """``launch/local.sh -n 2 -d 1 -- python -m disrouter_jax.train ...`` from a fresh workdir, on a
    local directory and on the emulated GCS (the race of issue 22: both processes built the pool
    and wrote the same labels, then one died of FileExistsError and the other in a Gloo timeout;
    then process 1 loaded an SFT export process 0 had not renamed into place yet). Process 0
    alone writes the shared files, the others wait; both write their shards of every checkpoint."""
    import fsspec

    from disrouter_jax import storage
    from tests.storage.emulator import BUCKET, env_for, use_in_this_process

    env = {**trainer.env, storage.CACHE_ENV: str(tmp_path / "cache"), "DISROUTER_HEARTBEAT_TIMEOUT_S": "60"}
    if where == "gcs":
        use_in_this_process(gcs_emulator.url, monkeypatch)
        url, pool_url = f"gs://{BUCKET}/train-2proc", f"gs://{BUCKET}/train-2proc-pool"
        storage.upload_tree(trainer.pool_dir, pool_url, last=("pool.json",))
        env.update(env_for(gcs_emulator.url))
    else:
        url, pool_url = str(tmp_path / "work"), str(trainer.pool_dir)
    command = [arg for arg in trainer.command(url) if not arg.startswith("--config.pool.dir=")]
    command += [f"--config.pool.dir={pool_url}", "--config.checkpoint.every_steps=100",
                f"--config.sft.steps={SFT_STEPS_2PROC}", f"--config.rl.steps={RL_STEPS_2PROC}"]
    logs = tmp_path / "logs"
    done = subprocess.run(["bash", str(PROJECT_ROOT / "launch" / "local.sh"), "-n", "2", "-d", "1", "-l", str(logs),
                           "--", *command], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=2 * RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "all 2 processes succeeded" in done.stderr
    fs, root = fsspec.core.url_to_fs(url)
    files = {key.split(f"{root}/", 1)[1] for key in fs.find(root)}
    for name in TRAINED:
        agent = f"agents/{name}"
        assert {f"{agent}/labels/labels.jsonl", f"{agent}/labels/summary.json", f"{agent}/sft/targets.json",
                f"{agent}/sft/DONE", f"{agent}/rl/DONE", f"{agent}/final/config.json",
                f"{agent}/final/model.safetensors"} <= files
        assert not [n for n in files if n.startswith(f"{agent}/labels/labels.part") or ".tmp" in n]
        for stage, steps in (("sft", SFT_STEPS_2PROC), ("rl", RL_STEPS_2PROC)):
            shards = {n.split("/state/")[1].split("/")[0] for n in files
                      if n.startswith(f"{agent}/{stage}/checkpoints/{steps}/state/ocdbt.process_")}
            assert shards == {"ocdbt.process_0", "ocdbt.process_1"}, (name, stage, shards)
    assert not (PROJECT_ROOT / "gs:").exists()
