"""disrouter_jax.distributed and launch/: settings, work splitting, and real multi-process jobs.

The multi-process tests start separate Python processes on 127.0.0.1 (each with its own
``XLA_FLAGS`` device count; this pytest process keeps its 8 devices and never initialises
jax.distributed). Every child is bounded by a timeout and killed in a ``finally``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from disrouter_jax import distributed
from disrouter_jax.distributed import settings as launch_settings
from disrouter_jax.distributed import work
from disrouter_jax.sharding import MeshConfig, make_mesh, to_host

from .conftest import build_hf_checkpoint, child_xla_flags

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "multiprocess_worker.py"
LAUNCH = PROJECT_ROOT / "launch"
JOB_TIMEOUT_S = 120  # generous: the 2-core CI box is shared; a healthy job takes ~10-30 s


# ----------------------------------------------------------------------------------------------
# Settings: arguments, environment, cluster detection (pure, no JAX runtime involved).


def test_settings_arguments_win_over_environment():
    env = {"DISROUTER_COORDINATOR": "10.0.0.1:1234", "DISROUTER_NUM_PROCESSES": "4",
           "DISROUTER_PROCESS_ID": "3", "DISROUTER_LOCAL_DEVICE_IDS": "0,1",
           "DISROUTER_HEARTBEAT_TIMEOUT_S": "7"}
    s = launch_settings.resolve_settings(process_id=1, environ=env)
    assert (s.coordinator_address, s.num_processes, s.process_id) == ("10.0.0.1:1234", 4, 1)
    assert s.local_device_ids == (0, 1) and s.heartbeat_timeout_s == 7 and s.explicit
    assert s.initialization_timeout_s == launch_settings.DEFAULT_INIT_TIMEOUT_S
    assert launch_settings.resolve_settings(environ={}) == launch_settings.LaunchSettings()


@pytest.mark.parametrize("env, message", [
    ({"DISROUTER_NUM_PROCESSES": "two"}, "DISROUTER_NUM_PROCESSES='two' is not an integer"),
    ({"DISROUTER_LOCAL_DEVICE_IDS": "0;1"}, "DISROUTER_LOCAL_DEVICE_IDS"),
    ({"DISROUTER_NUM_PROCESSES": "2", "DISROUTER_PROCESS_ID": "2"}, "process_id=2 must be < num_processes=2"),
    ({"DISROUTER_COORDINATOR": "10.0.0.1"}, "must be host:port"),
    ({"DISROUTER_CLUSTER": "yarn"}, "cluster='yarn'"),
    ({"DISROUTER_HEARTBEAT_TIMEOUT_S": "0"}, "heartbeat_timeout_s=0"),
])
def test_settings_bad_values_name_the_variable(env, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        launch_settings.resolve_settings(environ=env)


def settings(**kw):
    return launch_settings.LaunchSettings(**kw)


def test_choose_source():
    full = dict(coordinator_address="h:1", num_processes=2, process_id=0)
    assert launch_settings.choose_source(settings(), None) == "single"
    assert launch_settings.choose_source(settings(**full), ("slurm", 8)) == "explicit"  # explicit wins
    assert launch_settings.choose_source(settings(**{**full, "num_processes": 1}), None) == "single"
    assert launch_settings.choose_source(settings(), ("slurm", 2)) == "slurm"
    assert launch_settings.choose_source(settings(), ("gcetpu", 1)) == "single"  # one-host TPU VM
    assert launch_settings.choose_source(settings(), ("gcetpu", None)) == "gcetpu"
    assert launch_settings.choose_source(settings(cluster="none"), ("slurm", 2)) == "single"
    assert launch_settings.choose_source(settings(cluster="slurm"), ("slurm", 2)) == "slurm"
    # A coordinator on SLURM: JAX fills in the rest.
    assert launch_settings.choose_source(settings(coordinator_address="h:1"), ("slurm", 2)) == "slurm"
    with pytest.raises(ValueError, match=r"'num_processes', 'process_id'"):
        launch_settings.choose_source(settings(coordinator_address="h:1"), None)
    with pytest.raises(ValueError, match="cluster='none'"):
        launch_settings.choose_source(settings(cluster="none", num_processes=2), None)
    with pytest.raises(RuntimeError, match="cluster='ompi' requested"):
        launch_settings.choose_source(settings(cluster="ompi"), ("slurm", 2))


CLUSTER_ENV_PREFIXES = ("SLURM_", "OMPI_", "PMIX_", "TPU_", "KUBERNETES_", "DISROUTER_", "JAX_COORDINATOR")


@pytest.fixture
def clean_cluster_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(CLUSTER_ENV_PREFIXES):
            monkeypatch.delenv(name)
    return monkeypatch


def test_detect_cluster_uses_jax_detectors(clean_cluster_env):
    assert launch_settings.detect_cluster() is None
    for name, value in {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "2",
                        "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}.items():
        clean_cluster_env.setenv(name, value)
    assert launch_settings.detect_cluster() == ("slurm", 2)


def test_slurm_one_task_per_node_uses_every_gpu():
    assert launch_settings.slurm_local_device_ids({"SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_GPUS_ON_NODE": "8"}) == tuple(range(8))
    assert launch_settings.slurm_local_device_ids({"SLURM_TASKS_PER_NODE": "1", "CUDA_VISIBLE_DEVICES": "2,3"}) == (0, 1)
    # One process per GPU: JAX's own choice (GPU = SLURM_LOCALID) is right, so no override.
    assert launch_settings.slurm_local_device_ids({"SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_GPUS_ON_NODE": "8"}) is None
    assert launch_settings.slurm_local_device_ids({"SLURM_STEP_TASKS_PER_NODE": "1(x2)"}) is None  # CPU nodes


def test_initialize_is_a_noop_on_one_host(clean_cluster_env):
    info = distributed.initialize()
    assert info == distributed.ProcessInfo(0, 1, None, "single") and info.is_coordinator
    assert not jax.distributed.is_initialized()
    clean_cluster_env.setenv("DISROUTER_NUM_PROCESSES", "1")
    clean_cluster_env.setenv("DISROUTER_PROCESS_ID", "0")
    clean_cluster_env.setenv("DISROUTER_COORDINATOR", "127.0.0.1:1")
    assert distributed.initialize().source == "single"
    assert not jax.distributed.is_initialized()
    assert distributed.is_coordinator()


# ----------------------------------------------------------------------------------------------
# Work splitting and object gathering, single process.


@pytest.mark.parametrize("num_items, count", [(10, 3), (2, 4), (0, 2), (8, 1)])
def test_process_shard_blocks_concatenate_back(num_items, count):
    items = [f"q{i}" for i in range(num_items)]
    blocks = [work.process_shard(items, i, count) for i in range(count)]
    assert sum(blocks, []) == items
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert work.process_shard(items) == items  # one process holds everything
    with pytest.raises(ValueError, match="process_index=3"):
        work.process_shard(items, 3, 3)


def test_to_host_and_gather_single_process():
    mesh = make_mesh(MeshConfig(data=1, fsdp=8))
    x = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, PartitionSpec("fsdp")))
    np.testing.assert_array_equal(to_host({"x": x})["x"], np.arange(32.0).reshape(8, 4))
    assert work.gather_objects({"a": 1}) == [{"a": 1}]
    work.barrier("single")  # no peers: returns at once


# ----------------------------------------------------------------------------------------------
# Real multi-process jobs.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(devices: int, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_ENV_PREFIXES)}
    # The session's O0 LLVM (tests/conftest.py): every run of a comparison uses the same flags.
    env.update(XLA_FLAGS=child_xla_flags(devices),
               JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", DISROUTER_HEARTBEAT_TIMEOUT_S="30",
               DISROUTER_INIT_TIMEOUT_S="60")
    env.update(extra or {})
    return env


def start_job(args: list[str], num_processes: int, devices: int, log_dir: Path, extra_env=None):
    """Starts ``num_processes`` copies of ``args`` (single process: no DISROUTER_* at all)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    for pid in range(num_processes):
        env = child_env(devices, extra_env)
        if num_processes > 1:
            env.update(DISROUTER_COORDINATOR=f"127.0.0.1:{port}", DISROUTER_NUM_PROCESSES=str(num_processes),
                       DISROUTER_PROCESS_ID=str(pid))
        log = open(log_dir / f"log{pid}.txt", "w")
        procs.append((subprocess.Popen(args, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def wait_all(procs, timeout_s: float = JOB_TIMEOUT_S) -> list[int]:
    """Exit codes; a job still running after ``timeout_s`` is a failure (a hang)."""
    import time

    deadline = time.monotonic() + timeout_s
    try:
        codes = []
        for proc, _ in procs:
            try:
                codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                pytest.fail(f"process {proc.args} still running after {timeout_s} s (hang)")
        return codes
    finally:
        kill_all(procs)


def kill_all(procs):
    for proc, log in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def logs(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(log_dir.glob("log*.txt")))


def run_worker(mode: str, out: Path, num_processes: int, devices: int, *extra: str, extra_env=None):
    out.mkdir(parents=True, exist_ok=True)
    procs = start_job([sys.executable, str(WORKER), mode, "--out", str(out), *extra], num_processes, devices, out / "logs",
                      extra_env)
    codes = wait_all(procs)
    assert codes == [0] * num_processes, f"worker exit codes {codes}\n{logs(out / 'logs')}"
    return [pickle.loads((out / f"process{i}.pkl").read_bytes()) for i in range(num_processes)]


def test_two_processes_compute_the_single_process_value(tmp_path):
    results = run_worker("compute", tmp_path, num_processes=2, devices=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    h = np.tanh(x @ w)
    for r in results:
        assert r["process_count"] == 2 and r["device_count"] == 4
        assert r["second_initialize"] == "already"
        assert not r["x_fully_addressable"]  # the batch really is spread over both processes
        np.testing.assert_array_equal(r["x"], x)
        np.testing.assert_allclose(r["out"]["h"], h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["out"]["gram"], x.T @ x, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r["out"]["total"], h.sum(), rtol=1e-5)
        assert [g["id"] for g in r["gathered"]] == [0, 1]
        assert sum((g["items"] for g in r["gathered"]), []) == list(range(7))
    for key in ("h", "gram", "total"):  # every process holds the same global value
        np.testing.assert_array_equal(results[0]["out"][key], results[1]["out"][key])


# Float32 sums are reduced in a different order across processes (gloo) than on one host, so
# equality is up to rounding: losses to 1e-5 relative; parameters after 3 Adam steps of lr 1e-2
# to 5e-5 absolute (one step moves a weight by up to 1e-2, so a wrong batch or a missing
# gradient reduction shows up orders of magnitude above this).
LOSS_RTOL, PARAM_ATOL = 1e-5, 5e-5


def run_two_and_one(mode: str, tmp_path: Path, *args: str):
    """The same worker as 2 processes x 2 devices and as 1 process x 4 devices, run side by side
    (three processes share the CPUs instead of two jobs running one after the other)."""
    multi_out, single_out = tmp_path / "multi", tmp_path / "single"
    multi_out.mkdir()
    single_out.mkdir()
    multi = start_job([sys.executable, str(WORKER), mode, "--out", str(multi_out), *args], 2, 2, multi_out / "logs")
    single = []
    try:
        single = start_job([sys.executable, str(WORKER), mode, "--out", str(single_out), *args], 1, 4,
                           single_out / "logs")
        multi_codes, single_codes = wait_all(multi), wait_all(single)
    finally:
        kill_all(multi + single)
    assert multi_codes == [0, 0], logs(multi_out / "logs")
    assert single_codes == [0], logs(single_out / "logs")
    results = [pickle.loads((out / f"process{i}.pkl").read_bytes()) for out, i in ((multi_out, 0), (multi_out, 1), (single_out, 0))]
    return multi_out, single_out, results


def test_sharded_sft_steps_match_single_process(tmp_path):
    ckpt = build_hf_checkpoint(tmp_path / "ckpt", vocab_size=64, hidden_size=16, intermediate_size=24,
                               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                               tie_word_embeddings=False)
    multi_out, single_out, (p0, p1, reference) = run_two_and_one("sft", tmp_path, "--checkpoint", str(ckpt),
                                                                  "--steps", "3")
    assert (reference["process_count"], p0["process_count"]) == (1, 2)
    assert p0["num_split_across_processes"] >= 5  # FSDP really spans both processes
    assert p0["losses"] == p1["losses"]  # replicated metrics are one value
    np.testing.assert_allclose(p0["losses"], reference["losses"], rtol=LOSS_RTOL)
    assert len(set(np.round(reference["losses"], 3))) == 3  # distinct batches per step
    assert p0["params"].keys() == reference["params"].keys() and len(reference["params"]) > 5
    for name, value in reference["params"].items():
        np.testing.assert_array_equal(p0["params"][name], p1["params"][name], err_msg=name)
        np.testing.assert_allclose(p0["params"][name], value, rtol=0, atol=PARAM_ATOL, err_msg=name)
    # Training moved the parameters far beyond the tolerance, so the comparison is meaningful.
    initial_vd = load_safetensors(ckpt)["model.embed_tokens.weight"]
    assert np.abs(reference["params"]["['embedding_vd'].value"] - initial_vd).max() > 100 * PARAM_ATOL
    # Only process 0 wrote the metrics and the exported checkpoint.
    logged = [json.loads(line)["loss"] for line in (multi_out / "metrics.jsonl").read_text().splitlines()]
    assert logged == p0["losses"]
    assert sorted(p.name for p in multi_out.iterdir()) == ["export", "logs", "metrics.jsonl", "process0.pkl", "process1.pkl"]
    exported = load_safetensors(multi_out / "export")
    for name, value in load_safetensors(single_out / "export").items():
        np.testing.assert_allclose(exported[name], value, rtol=0, atol=PARAM_ATOL, err_msg=name)


def load_safetensors(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(directory / "model.safetensors"))


def test_cascade_evaluation_over_processes_matches_single_process(scripted_ladder, tmp_path):
    paths = scripted_ladder
    multi_out, single_out, (p0, p1, reference) = run_two_and_one("cascade", tmp_path, "--agents",
                                                                  ",".join(map(str, paths)))
    assert (p0["local_queries"], p1["local_queries"], reference["local_queries"]) == (5, 4, 9)
    assert p0["records"] == p1["records"] == reference["records"]
    assert p0["report"] == reference["report"]
    # Only process 0 wrote, and the files are byte for byte the single-process ones.
    for name in ("report.json", "routing_log.jsonl"):
        assert (multi_out / name).read_bytes() == (single_out / name).read_bytes(), name
    # The routing is non-trivial: some queries are forwarded, some answered by the first agent.
    visits = {len(r["visited"]) for r in reference["records"]}
    assert len(reference["records"]) == 18 and {1, 3} <= visits


@pytest.mark.parametrize("dying", [1, 0])
def test_dead_peer_fails_the_others_instead_of_hanging(tmp_path, dying):
    procs = start_job([sys.executable, str(WORKER), "die", "--out", str(tmp_path), "--die-process", str(dying)],
                      2, 2, tmp_path / "logs", {"DISROUTER_HEARTBEAT_TIMEOUT_S": "5"})
    codes = wait_all(procs, timeout_s=60)  # a hang fails here
    survivor = 1 - dying
    assert (tmp_path / "initialized0").exists() and (tmp_path / "initialized1").exists(), logs(tmp_path / "logs")
    assert codes[dying] == 1
    assert codes[survivor] != 0, logs(tmp_path / "logs")
    assert not (tmp_path / f"process{survivor}.pkl").exists()
    text = (tmp_path / "logs" / f"log{survivor}.txt").read_text()
    assert re.search(r"another task died|stopped sending heartbeats|leader task was preempted/died", text), text[-3000:]


# ----------------------------------------------------------------------------------------------
# launch/ scripts.


@pytest.mark.parametrize("script", ["local.sh", "slurm_gpu.sbatch", "tpu_pod.sh"])
def test_launch_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True, timeout=30)


def test_local_sh_runs_the_selftest_on_two_processes(tmp_path):
    env = child_env(1, {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    done = subprocess.run(["bash", str(LAUNCH / "local.sh"), "-n", "2", "-d", "2", "-l", str(tmp_path)], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[p0] selftest ok: process 0 of 2" in done.stdout and "[p1] selftest ok: process 1 of 2" in done.stdout
    assert "4 global devices" in (tmp_path / "process1.log").read_text()


def test_local_sh_fails_when_one_process_fails(tmp_path):
    command = [sys.executable, "-c", "import os, sys, time; "
               "sys.exit(3) if os.environ['DISROUTER_PROCESS_ID'] == '1' else time.sleep(120)"]
    done = subprocess.run(["bash", str(LAUNCH / "local.sh"), "-n", "3", "-d", "1", "-l", str(tmp_path), "--", *command],
                          env=child_env(1), capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "exited with status 3; stopping the others" in done.stderr


def fake_slurm_bin(directory: Path) -> Path:
    """``scontrol`` and ``srun`` stand-ins: srun runs --ntasks copies here, rank in SLURM_PROCID."""
    directory.mkdir()
    (directory / "scontrol").write_text("#!/usr/bin/env bash\necho 127.0.0.1\necho 127.0.0.2\n")
    (directory / "srun").write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        ntasks=1
        while [[ "$1" == --* ]]; do
          case "$1" in --ntasks=*) ntasks="${1#--ntasks=}" ;; esac
          shift
        done
        pids=()
        for ((i = 0; i < ntasks; i++)); do
          SLURM_PROCID=$i SLURM_NTASKS=$ntasks "$@" & pids+=($!)
        done
        status=0
        for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
        exit $status
        """))
    for tool in ("scontrol", "srun"):
        (directory / tool).chmod(0o755)
    return directory


def test_slurm_sbatch_script_runs_one_process_per_node(tmp_path):
    fake_bin = fake_slurm_bin(tmp_path / "bin")
    env = child_env(2, {
        "PATH": f"{fake_bin}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node[001-002]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242",
        "SLURM_SUBMIT_DIR": str(PROJECT_ROOT), "VENV": str(tmp_path / "no_venv"), "DISROUTER_PORT": str(free_port()),
    })
    done = subprocess.run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "python", "-m", "disrouter_jax.distributed",
                           "--selftest", "--expect-processes", "2"], env=env, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "coordinator 127.0.0.1:" in done.stderr
    for pid in (0, 1):
        assert f"selftest ok: process {pid} of 2 (explicit)" in done.stdout


def test_tpu_pod_script_runs_on_every_worker(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "TPU_NAME": "pod", "ZONE": "z1", "BUCKET": "bkt"}
    run = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "run"], env=env, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert run.startswith("gcloud compute tpus tpu-vm ssh pod --worker=all --command=")
    assert "disrouter_jax.train" in run and "gs://bkt/pod" in run and "--zone=z1" in run
    create = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "create"], env={**env, "ACCELERATOR_TYPE": "v5litepod-16"},
                            capture_output=True, text=True, timeout=30, check=True).stdout
    assert "tpu-vm create pod --accelerator-type=v5litepod-16" in create
    bad = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "nonsense"], env=env, capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and "launch/tpu_pod.sh create" in bad.stderr


def test_readme_documents_every_script():
    readme = (LAUNCH / "README.md").read_text()
    for script in ("local.sh", "slurm_gpu.sbatch", "tpu_pod.sh"):
        assert script in readme
