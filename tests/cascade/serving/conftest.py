"""Servers for the serving tests, on 127.0.0.1 only.

* ``ladder_pool``: the scripted ladder (tests/cascade/scripted_agents.py) saved as a pool and a
  config file that serves it, as a team would write one (``pool.agents``, no training).
* ``ServerProcess``: the real ``python -m disrouter_jax.serve`` in a subprocess on a free port.
* ``InProcessServer``: uvicorn in a thread over an app with stand-in stages (no model), for the
  fault cases that need stages to be slow or to raise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PROJECT_ROOT, child_xla_flags

COSTS = (0.1, 0.5, 0.9)
HOST = "127.0.0.1"

CONFIG_TEMPLATE = '''
import importlib.util

_spec = importlib.util.spec_from_file_location("serve_base", {base!r})
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config(config_string=None):
    config = _base.get_config("paper")
    config.dtype = "float32"
    config.pool.agents = {agents!r}
    s = config.serve
    s.train_agents = False
    s.max_new_tokens = 12
    s.max_batch_size = 16  # five batch buckets, compiled while the test computes the offline answers
    s.prompt_buckets = (16,)  # the scripted prompts are a few tokens: one prompt bucket
    s.warmup = "all"
    # The few streamed requests compile their shapes on first use: those programs never come from
    # the compilation cache the module's servers share (host callbacks), and start-up is the cost.
    s.warmup_streaming = False
    return config
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ladder_pool(scripted_ladder, tmp_path_factory):
    """``(config_path, agent dicts)`` of a served scripted ladder (the session's, tests/conftest.py)."""
    root = tmp_path_factory.mktemp("served_ladder")
    paths = scripted_ladder
    agents = [{"name": f"agent{k}", "path": str(p), "cost": c} for k, (p, c) in enumerate(zip(paths, COSTS))]
    config_path = root / "serve_ladder.py"
    config_path.write_text(CONFIG_TEMPLATE.format(base=str(PROJECT_ROOT / "configs" / "serve.py"), agents=agents))
    return config_path, agents


@pytest.fixture(scope="session")
def ladder_agents(ladder_pool):
    """The served ladder loaded in this process (for the offline engine's answers)."""
    from disrouter_jax.agents import AgentSpec, load_agent

    return [load_agent(AgentSpec(a["name"], a["path"], a["cost"])) for a in ladder_pool[1]]


def wait_ready(base_url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} not ready within {timeout} s")


class ServerProcess:
    """``python -m disrouter_jax.serve`` on a free port of 127.0.0.1 (one host device, as served)."""

    def __init__(self, config_path: Path, workdir: Path, *overrides: str, compilation_cache: Path | None = None):
        """``compilation_cache``: a persistent XLA compilation cache for the server's programs
        (servers of one configuration share theirs: a later one loads what an earlier compiled)."""
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        env = dict(os.environ)
        # One device (the session's 8 fake ones are not the server's) and the session's O0, which
        # the offline engine its replies are compared with compiles at too.
        env["XLA_FLAGS"] = child_xla_flags()
        env["PYTHONPATH"] = str(PROJECT_ROOT)
        if compilation_cache is not None:
            env.update(JAX_COMPILATION_CACHE_DIR=str(compilation_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                       JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
        self.log_path = Path(workdir) / f"server_{self.port}.log"
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "disrouter_jax.serve", f"--config={config_path}", f"--workdir={workdir}",
             f"--port={self.port}", *overrides],
            cwd=PROJECT_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> "ServerProcess":
        try:
            wait_ready(self.base_url, timeout, self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"server failed to start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int:
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self._log.close()


class InProcessServer:
    """uvicorn serving ``app`` in a thread of this process."""

    def __init__(self, app, wait_health: bool = True):
        import uvicorn

        self.wait_health = wait_health
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "InProcessServer":
        self.thread.start()
        deadline = time.monotonic() + 30.0
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        if self.wait_health:
            wait_ready(self.base_url, 30.0)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def openai_client(base_url: str, **kwargs):
    import openai

    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, **kwargs)
