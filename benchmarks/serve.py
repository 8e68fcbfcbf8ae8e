"""Serving throughput: dynamic batching vs one request at a time, at 1 / 8 / 64 concurrent clients.

Starts ``python -m disrouter_jax.serve`` twice on the toy pool of ``--workdir`` (trained there
first if absent, as ``evaluate`` does), on 127.0.0.1:

- ``batched``: the server as configured (``serve.max_batch_size`` rows, ``batch_window_ms`` /
  ``max_batch_wait_ms``, one worker per agent);
- ``one_at_a_time``: ``max_batch_size=1``, no window, one worker — every request runs the
  cascade alone.

Each client sends the toy evaluation questions (plain prompts, as a client would; α cycling over
0.2 / 0.5 / 0.8, greedy) one after the other; a first pass at every client count is not timed
(the server compiled its shapes before /health turned ready). The clients are aiohttp sessions in
this process (the load generator shares the machine's cores with the server). ``--reduced``:
the reduced toy pool (``pool.reduced``: 3 agents on the test-sized world), for a machine where
training the default pool takes too long. Reports requests/s and p50 / p99 latency per mode and client
count, the speed-up over one-at-a-time at the same client count, and whether both modes gave the
same reply to every (question, α) (greedy: they must).

    python benchmarks/serve.py --workdir workdir/demo
    python benchmarks/serve.py --workdir workdir/demo --clients 1,8,64 --requests 256
    python benchmarks/serve.py --workdir workdir/serve_reduced --reduced
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {0.2: "disrouter-performance-first", 0.5: "disrouter-balance", 0.8: "disrouter-cost-first"}
# Nothing here streams: neither server compiles the streaming programs (a shorter start-up).
COMMON = ("--config.serve.warmup_streaming=False",)
MODES = {"batched": COMMON,
         "one_at_a_time": COMMON + ("--config.serve.max_batch_size=1", "--config.serve.batch_window_ms=0",
                                    "--config.serve.pipeline=False")}


def toy_questions(workdir: Path, config_arg: str, overrides: dict) -> list[list[dict]]:
    """The toy evaluation questions as a client sends them: the plain user message."""
    import importlib.util

    # Loaded by path: this script is itself named serve.py.
    spec = importlib.util.spec_from_file_location("serve_config", ROOT / config_arg.partition(":")[0])
    serve_config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_config)

    from disrouter_jax import pipeline
    from disrouter_jax.cascade.queries import evaluation_queries
    from disrouter_jax.tasks.registry import get_task

    config = serve_config.get_config(config_arg.partition(":")[2] or None)
    for key, value in overrides.items():
        config.pool[key] = value
    pipeline.ensure_pool(config, workdir)  # registers the toy tasks
    return [get_task(q.example.task).messages(q.example, None) for q in evaluation_queries(config, workdir)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(config: str, workdir: Path, extra: tuple[str, ...], log_path: Path):
    import httpx

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "disrouter_jax.serve", f"--config={config}",
                             f"--workdir={workdir}", f"--port={port}", *extra],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 3600  # a first run trains the toy pool
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {log_path}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"server not ready; see {log_path}")


async def load(url: str, questions, clients: int, total: int) -> tuple[float, list[float], dict]:
    """``clients`` concurrent clients send ``total`` requests in all; (wall s, latencies, replies)."""
    import aiohttp

    latencies, replies = [], {}
    next_index = iter(range(total))

    async def client(http):
        for i in next_index:
            alpha = (0.2, 0.5, 0.8)[i % 3]
            q = (i // 3) % len(questions)
            body = {"model": MODELS[alpha], "messages": questions[q], "temperature": 0}
            started = time.perf_counter()
            async with http.post(f"{url}/v1/chat/completions", json=body) as reply:
                reply.raise_for_status()
                data = await reply.json()
            latencies.append(time.perf_counter() - started)
            replies[(q, alpha)] = (data["choices"][0]["message"]["content"], data["disrouter"]["answering_agent"])

    # aiohttp rather than httpx: less client time per request, and the load generator shares
    # the cores with the server it measures.
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
    return wall, latencies, replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="workdir/demo", type=Path)
    parser.add_argument("--config", default="configs/serve.py:toy")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--requests", type=int, default=192, help="timed requests per client count and mode")
    parser.add_argument("--warm-requests", type=int, default=64, help="untimed requests first (compilations)")
    parser.add_argument("--reduced", action="store_true", help="the reduced toy pool (config.pool.reduced)")
    parser.add_argument("--output", type=Path, default=harness.RESULTS_DIR / "serve.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    clients_list = [int(c) for c in args.clients.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    pool = {"reduced": True} if args.reduced else {}
    questions = toy_questions(args.workdir, args.config, pool)
    pool_flags = tuple(f"--config.pool.{k}={v}" for k, v in pool.items())
    results, replies_by_mode, started_s = [], {}, {}
    for mode, extra in MODES.items():
        begun = time.perf_counter()
        log = args.workdir / f"bench_serve_{mode}.log"
        proc, url = start_server(args.config, args.workdir, pool_flags + extra, log)
        started_s[mode] = time.perf_counter() - begun
        try:
            replies_by_mode[mode] = {}
            for clients in clients_list:
                asyncio.run(load(url, questions, clients, max(args.warm_requests, clients)))
                wall, latencies, replies = asyncio.run(load(url, questions, clients, args.requests))
                replies_by_mode[mode].update(replies)
                ms = np.asarray(latencies) * 1000
                results.append({"mode": mode, "clients": clients, "requests": len(latencies),
                                "requests_per_s": len(latencies) / wall, "p50_ms": float(np.percentile(ms, 50)),
                                "p99_ms": float(np.percentile(ms, 99)), "wall_s": wall})
                print(f"{mode:>14} clients={clients:<3} {results[-1]['requests_per_s']:8.1f} req/s  "
                      f"p50 {results[-1]['p50_ms']:7.1f} ms  p99 {results[-1]['p99_ms']:7.1f} ms", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    base = {r["clients"]: r["requests_per_s"] for r in results if r["mode"] == "one_at_a_time"}
    for r in results:
        r["speedup_vs_one_at_a_time"] = r["requests_per_s"] / base[r["clients"]]
    shared = set(replies_by_mode["batched"]) & set(replies_by_mode["one_at_a_time"])
    same = sum(replies_by_mode["batched"][k] == replies_by_mode["one_at_a_time"][k] for k in shared)
    print("\n| mode | clients | requests/s | p50 ms | p99 ms | vs one-at-a-time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['mode']} | {r['clients']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['speedup_vs_one_at_a_time']:.2f}x |")
    print(f"\nreplies identical across modes: {same}/{len(shared)} (question, alpha) pairs")
    print(f"server start-up (load + warm-up) s: {started_s}; load average now {os.getloadavg()}")
    harness.write_result({"results": results, "identical_replies": [same, len(shared)], "questions": len(questions),
                          "config": args.config, "reduced_pool": args.reduced, "startup_s": started_s,
                          "cpu_count": os.cpu_count(), "load_average_start": load_at_start,
                          "load_average": os.getloadavg()},
                         args.output)


if __name__ == "__main__":
    main()
