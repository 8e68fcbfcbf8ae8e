"""Session-wide fixtures: tiny Hugging Face checkpoints built offline, the shared data folder, the
scripted ladder and the toy and Qwen2.5-like pools, and the work started in the background.

Eight host devices are requested before JAX starts so mesh tests run in the same session; tests
that do not use a mesh see device 0 only.
"""

import json
import os

# XLA:CPU's LLVM at O0 for this process and for the CLIs and servers it starts (`child_xla_flags`):
# compiling is most of the suite's CPU time and O0 cuts it by about a third (tests/models/test_qwen2,
# selfaware and training: 194 -> 134 CPU-seconds) for programs that run a little slower. The toy
# pool builds keep the default level: they are thousands of training steps, which O0 makes twice
# as costly (the reduced pool: 293 -> 551 CPU-seconds). Every comparison between processes is
# between processes with the same flags; no test checks a rounding.
TEST_OPT_FLAG = "--xla_backend_optimization_level=0"
_SESSION_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _SESSION_FLAGS:
    _SESSION_FLAGS = f"{_SESSION_FLAGS} {TEST_OPT_FLAG}".strip()
if "xla_force_host_platform_device_count" not in _SESSION_FLAGS:
    _SESSION_FLAGS = f"{_SESSION_FLAGS} --xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = _SESSION_FLAGS
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from disrouter_jax import runtime  # noqa: E402

# Before JAX starts its threads: the suite is hundreds of small XLA:CPU programs (see runtime.py).
runtime.keep_freed_memory()

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def child_xla_flags(devices: int | None = None, *, optimized: bool = False) -> str:
    """``XLA_FLAGS`` for a child process: this session's flags with ``devices`` host devices
    (None: XLA's one) and, unless ``optimized``, the session's O0 (see `TEST_OPT_FLAG`)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", _SESSION_FLAGS)
    if optimized:
        flags = flags.replace(TEST_OPT_FLAG, "")
    if devices is not None:
        flags = f"{flags} --xla_force_host_platform_device_count={devices}"
    return " ".join(flags.split())

# Named tiny shapes; tests ask for them by name so each checkpoint is built once per session.
TINY_SHAPES = {
    # 4 query heads over 2 KV heads, untied head.
    "gqa2": dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    # Qwen2.5-0.5B-like: tied embeddings, 7:1 GQA (14 heads over 2 KV heads in the real model).
    "tied_gqa7": dict(vocab_size=101, hidden_size=56, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=7, num_key_value_heads=1, tie_word_embeddings=True),
    # Plain multi-head attention, legacy top-level rope_theta.
    "mha": dict(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
                rope_theta=50000.0),
}

# One or two tiny checkpoints per other family (``model_type`` picks it), between them: GQA 1:1 to
# 4:1, tied and untied, Qwen3's head_dim unrelated to hidden_size, Llama-3 RoPE scaling whose
# three frequency bands all occur at head_dim 16, a Mistral window shorter than the test prompts.
# Weights drawn 5x wider than transformers' default so that attention is far from uniform and
# RoPE and the window visibly change the logits.
FAMILY_SHAPES = {
    "qwen3_hd12": dict(model_type="qwen3", vocab_size=89, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                       tie_word_embeddings=False, initializer_range=0.1),
    "qwen3_tied_gqa3": dict(model_type="qwen3", vocab_size=83, hidden_size=24, intermediate_size=40,
                            num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                            tie_word_embeddings=True, initializer_range=0.1),
    # Wavelengths 2*pi*10000^(2i/16) = 6.3 (kept: < 32/4), 19.9 (interpolated), 63+ (divided by 8).
    "llama3_gqa4": dict(model_type="llama", vocab_size=95, hidden_size=48, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                        tie_word_embeddings=False, max_position_embeddings=128, initializer_range=0.1,
                        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                             low_freq_factor=1.0, high_freq_factor=4.0,
                                             original_max_position_embeddings=32)),
    "mistral_window3": dict(model_type="mistral", vocab_size=91, hidden_size=32, intermediate_size=48,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            sliding_window=3, tie_word_embeddings=False, initializer_range=0.1),
    "mistral_full_mha": dict(model_type="mistral", vocab_size=87, hidden_size=32, intermediate_size=40,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                             sliding_window=None, tie_word_embeddings=True, initializer_range=0.1),
}
TINY_SHAPES.update(FAMILY_SHAPES)

# model_type -> transformers (config class, causal LM class).
HF_CLASSES = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
              "llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM")}


def hf_causal_lm_class(model_type: str):
    import transformers

    return getattr(transformers, HF_CLASSES[model_type][1])


def build_hf_checkpoint(out_dir: Path, seed: int = 0, model_type: str = "qwen2", **shape) -> Path:
    """A random transformers model of ``model_type`` saved as real safetensors (non-zero
    biases/norms)."""
    import torch
    import transformers

    config_name, model_name = HF_CLASSES[model_type]
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(**shape)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "bias" in name or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(name) -> Path`` of a HF checkpoint directory, built once per session."""
    built: dict[str, Path] = {}

    def get(name: str = "gqa2") -> Path:
        if name not in built:
            out = tmp_path_factory.mktemp(f"ckpt_{name}")
            built[name] = build_hf_checkpoint(out, **TINY_SHAPES[name])
        return built[name]

    return get


def load_config_module(filename: str):
    """A ``configs/`` file as a module (they are plain files, not a package)."""
    import importlib.util

    path = PROJECT_ROOT / "configs" / filename
    spec = importlib.util.spec_from_file_location(f"configs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark rows not found at {SHARED_DATA} (only present in CI/dev checkouts)")
    return SHARED_DATA


# ------------------------------------------------------------------- scripted agents, toy pool
@pytest.fixture(scope="session")
def scripted_ladder(tmp_path_factory) -> list[Path]:
    """The scripted ladder (tests/cascade/scripted_agents.py: agents 0, 1, 2 whose greedy replies
    are known), built once per session. Read-only."""
    from tests.cascade import scripted_agents as sa

    return sa.build_ladder(tmp_path_factory.mktemp("scripted_ladder"))


# ----------------------------------------------------------------------- work in the background
# The longest set-ups of the session are child processes: pre-training the toy pools (the reduced
# pool, then the mixed one from a copy of it) and the paper setup's train and evaluate commands.
# Most tests keep about one of the two CPU cores busy, so when the session holds tests that need
# them, these start at its first test, each in a thread that only waits on its child processes,
# and their fixtures wait for them (`Background`, the `background` fixture). A child process has
# this process's environment (its 8 host devices included) and runs what the fixture would run
# itself; nothing of it runs in this process, so no test's compilation counters, random states or
# monkeypatched functions see it.


class Background:
    """Named jobs, each a function run in a thread of its own (``start``), their results or
    errors for ``wait``; the child processes they start go through ``run``, and ``stop`` (at the
    end of the session) kills those still running."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self._done: dict[str, threading.Event] = {}
        self._results: dict[str, object] = {}
        self._errors: dict[str, BaseException] = {}
        self._threads: list[threading.Thread] = []
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopped = False

    def start(self, name: str, job) -> None:
        """Runs ``job(self)`` in a thread; ``wait(name)`` gives what it returns."""
        done = self._done[name] = threading.Event()

        def target():
            try:
                self._results[name] = job(self)
            except BaseException as err:  # noqa: BLE001 - raised again by `wait`, in the test that needs it
                self._errors[name] = err
            finally:
                done.set()

        thread = threading.Thread(target=target, name=f"background-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def wait(self, name: str):
        if name not in self._done:
            raise RuntimeError(f"{name} was not started: a test asked for it outside its fixtures' closure")
        self._done[name].wait()
        if name in self._errors:
            raise RuntimeError(f"background job {name} failed: {self._errors[name]}") from self._errors[name]
        return self._results[name]

    def run(self, args: list[str], stdout: Path, stderr: Path | None = None, **popen) -> int:
        """``args`` in a child process of its own process group (so that ``stop`` also ends the
        processes it spawns), output to files (``stderr`` None: into ``stdout``'s); its exit code."""
        with open(stdout, "wb") as out, open(stderr or os.devnull, "wb") as err:
            with self._lock:
                if self._stopped:
                    raise RuntimeError("the session ended first")
                proc = subprocess.Popen(args, stdout=out, stderr=err if stderr else subprocess.STDOUT,
                                        start_new_session=True, **popen)
                self._procs.add(proc)
            try:
                return proc.wait()
            finally:
                with self._lock:
                    self._procs.discard(proc)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for proc in self._procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
        for thread in self._threads:
            thread.join(30)


def _build_toy_pool(root: Path, log: Path, *args: str):
    """A job: `python -m disrouter_jax.toy build --reduced` into ``root``, i.e. `build_pool` with
    ``PoolConfig.reduced(...)`` and the arguments ``args`` spell; returns ``root``."""
    # This checkout's package, whatever the environment's install points at; the default
    # optimisation level (a pool build is mostly running its training steps: `TEST_OPT_FLAG`).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
               XLA_FLAGS=child_xla_flags(8, optimized=True))

    def job(background: Background) -> Path:
        code = background.run([sys.executable, "-m", "disrouter_jax.toy", "build", "--out", str(root), "--reduced",
                               "--quiet", *args], log, cwd=PROJECT_ROOT, env=env)
        if code != 0:
            raise RuntimeError(f"the pool build exited {code}:\n{log.read_text(errors='replace')[-4000:]}")
        return root

    return job


def _partial_rebuild(root: Path, log: Path):
    """A job: a copy of the reduced pool without its smallest agent (the cheapest to pre-train
    again), completed by `python -m disrouter_jax.toy build` (one missing agent: pre-trained in
    that process, where the session's pool pre-trained it in a worker process); returns ``root``,
    the deleted agent's name, `load_pool`'s error on the incomplete pool, the other agents' file
    mtimes before the build, and the build's log."""
    build = _build_toy_pool(root, log)

    def job(background: Background) -> tuple[Path, str, str, dict[str, int], str]:
        shutil.copytree(background.wait("reduced_pool"), root)
        from disrouter_jax.toy.pool import POOL_FILE, PoolError, load_pool

        victim = json.loads((root / POOL_FILE).read_text())["agents"][0]["name"]
        shutil.rmtree(root / "agents" / victim)

        try:
            load_pool(root)
            missing = ""
        except PoolError as err:
            missing = str(err)
        survivors = {str(p.relative_to(root)): p.stat().st_mtime_ns
                     for p in sorted((root / "agents").rglob("*")) if p.is_file()}
        build(background)
        return root, victim, missing, survivors, log.read_text()

    return job


def start_toy_pools(background: Background, mixed: bool, partial: bool) -> None:
    factory = background.tmp_path_factory
    # Local iteration only: DISROUTER_TEST_POOL=DIR builds the reduced pool there once and reuses
    # it in later sessions (same config fingerprint); CI leaves it unset and builds a fresh one.
    reduced = Path(os.environ.get("DISROUTER_TEST_POOL") or factory.mktemp("toy_pool"))
    logs = factory.mktemp("toy_pool_logs")
    # The default workers: two agents at once, each in its own process.
    background.start("reduced_pool", _build_toy_pool(reduced, logs / "reduced.log"))
    if mixed:
        root = factory.mktemp("toy_pool_mixed") / "pool"
        build_mixed = _build_toy_pool(root, logs / "mixed.log", "--mixed", "--overwrite", "--workers", "1")

        def job(background: Background) -> Path:
            shutil.copytree(background.wait("reduced_pool"), root)  # its Qwen2 agents, reused as they are
            return build_mixed(background)

        background.start("mixed_pool", job)
    if partial:
        background.start("partial_rebuild", _partial_rebuild(factory.mktemp("toy_pool_partial") / "pool",
                                                             logs / "partial.log"))


def start_paper_run(background: Background, request) -> None:
    from tests import paper_setup

    pool = request.getfixturevalue("qwen25_pool")
    root = background.tmp_path_factory.mktemp("paper_setup")
    background.start("paper_run", lambda b: paper_setup.run_commands(pool, root, b.run))


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
    """`Background`, its jobs started at the session's first test for the fixtures that the
    collected tests need: ``reduced_pool`` and ``mixed_pool`` (below), ``paper_run``
    (tests/test_paper_setup.py, tests/paper_setup.py)."""
    needed = {name for item in request.session.items for name in item.fixturenames}
    jobs = Background(tmp_path_factory)
    try:
        if needed & {"reduced_pool", "mixed_pool", "partial_rebuild"}:
            start_toy_pools(jobs, mixed="mixed_pool" in needed, partial="partial_rebuild" in needed)
        if "paper_run" in needed and SHARED_DATA.is_dir():  # else the tests that need it skip
            start_paper_run(jobs, request)
        yield jobs
    finally:
        jobs.stop()


@pytest.fixture(scope="session")
def reduced_pool(background):
    """`Pool` of `PoolConfig.reduced()` built by `build_pool` into a session temp directory.

    Treat it as read-only: tests that delete or rebuild parts copy it first. Built with the default
    workers (two agents at once, each in its own process), so the partial rebuild (`partial_rebuild`),
    which pre-trains one agent in the building process itself, also checks that both ways give the
    same bytes.
    """
    from disrouter_jax.toy.pool import PoolConfig, build_pool

    # Built in the background (see `Background`): this only reads the complete pool back.
    return build_pool(background.wait("reduced_pool"), PoolConfig.reduced(), progress=False)


@pytest.fixture(scope="session")
def partial_rebuild(reduced_pool, background) -> tuple[Path, str, str, dict[str, int], str]:
    """A copy of the reduced pool whose smallest agent was deleted, then completed by the toy CLI
    in the background (`_partial_rebuild`): (its root, the deleted agent's name, the error loading
    it gave before the build, the other agents' file mtimes before the build, the build's log)."""
    return background.wait("partial_rebuild")


@pytest.fixture(scope="session")
def mixed_pool(reduced_pool, background):
    """`Pool` of `PoolConfig.reduced(mixed=True)`: a copy of the reduced pool rebuilt as the mixed
    one, so only its Llama agent (toy-s) is pre-trained; the Qwen2 agents' fingerprints are the
    reduced pool's and they are reused as they are. Read-only, like `reduced_pool`."""
    from disrouter_jax.toy.pool import PoolConfig, build_pool

    return build_pool(background.wait("mixed_pool"), PoolConfig.reduced(mixed=True), progress=False,
                      overwrite=True, workers=1)


@pytest.fixture(scope="session")
def qwen25_pool(shared_data, tmp_path_factory) -> list[dict]:
    """Five tiny agents with Qwen2.5's tokenizer conventions (tests/qwen25_pool.py), as
    ``pool.agents`` entries; built once per session. Read-only: copy an agent to change it."""
    from tests.qwen25_pool import build_pool

    return build_pool(shared_data, tmp_path_factory.mktemp("qwen25_pool"))


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A GCS JSON API on 127.0.0.1 (tests/storage/emulator.py), in its own process, started on
    first use; its bucket is `tests.storage.emulator.BUCKET`. Every user writes under its own prefix."""
    from tests.storage.emulator import Emulator

    server = Emulator(tmp_path_factory.mktemp("gcs") / "emulator.log").start()
    yield server
    server.stop()
