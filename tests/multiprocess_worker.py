"""One process of a multi-process JAX job on CPU, started by tests/test_distributed.py.

A plain script (not a test module): the test starts N copies with ``subprocess``, each with its own
environment (``XLA_FLAGS`` for its CPU device count, ``DISROUTER_*`` for the coordinator, process
count and id; none of those for a single-process reference run). Each copy writes what it saw to
``<out>/process<id>.pkl`` for the test to compare across processes and against the reference.

    python tests/multiprocess_worker.py {compute,sft,die,cascade} --out DIR [--checkpoint DIR] [--steps N]
        [--agents DIR,DIR,...]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

from disrouter_jax import distributed  # initialize() runs in main(), before any JAX computation
from disrouter_jax.distributed import work
from disrouter_jax.sharding import to_host

GLOBAL_ROWS = 8


def compute(args, info) -> dict:
    """A global-array computation whose value must not depend on the process count."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from disrouter_jax.sharding import MeshConfig, ShardingContext, make_mesh, named_sharding
    from disrouter_jax.training.state import shard_batch

    mesh = make_mesh(MeshConfig(data=2, fsdp=-1))
    rng = np.random.default_rng(0)
    x_full = rng.standard_normal((GLOBAL_ROWS, 6)).astype(np.float32)
    w_full = rng.standard_normal((6, 4)).astype(np.float32)
    # Placed as the train step places its batches: every process holds the whole batch.
    x = shard_batch(x_full, ShardingContext(mesh))
    # A weight sharded over fsdp: every process passes the whole value and keeps its slices.
    w = jax.make_array_from_callback(w_full.shape, named_sharding(("embed", None), w_full.shape, mesh), lambda i: w_full[i])

    @jax.jit
    def f(x_bd, w_dk):
        h_bk = jnp.tanh(x_bd @ w_dk)
        return {"h": h_bk, "gram": x_bd.T @ x_bd, "total": h_bk.sum()}

    out = to_host(f(x, w))
    return {
        "out": out,
        "x": to_host(x),
        "x_fully_addressable": bool(x.is_fully_addressable),
        "device_count": jax.device_count(),
        "second_initialize": distributed.initialize().source,
        "process_count": jax.process_count(),
        "gathered": work.gather_objects({"id": info.process_id, "items": work.process_shard(list(range(7)))}),
    }


def sft_batch(rows: int, width: int, vocab: int, seed: int):
    """Random rows; a few prompt and padding positions per row carry no loss."""
    import numpy as np

    from disrouter_jax.training.sft import TokenBatch

    rng = np.random.default_rng(seed)
    seq = rng.integers(0, vocab, (rows, width + 1)).astype(np.int32)
    mask = np.zeros((rows, width), np.float32)
    for r in range(rows):
        mask[r, 2: width - r % 3] = 1.0
    return TokenBatch(seq[:, :-1], seq[:, 1:], mask)


def sft(args, info) -> dict:
    """A few full fine-tuning SFT steps, FSDP over all 4 devices (so parameters, gradients and Adam
    moments are split across the processes, not only within each), every process feeding the whole
    batch as training does (the step places it; each device keeps its rows)."""
    import jax

    from disrouter_jax.models import qwen2
    from disrouter_jax.sharding import MeshConfig, make_mesh
    from disrouter_jax.training.optim import OptimConfig
    from disrouter_jax.training.sft import make_sft_step
    from disrouter_jax.training.state import create_train_state

    mesh = make_mesh(MeshConfig(data=1, fsdp=-1))
    model = qwen2.from_pretrained(args.checkpoint, mesh=mesh)
    optim = OptimConfig(learning_rate=1e-2, total_steps=args.steps, decay="constant", max_grad_norm=1.0)
    state = create_train_state(model, optim)
    step = make_sft_step(optim)
    losses = []
    for i in range(args.steps):
        state, metrics = step(state, sft_batch(GLOBAL_ROWS, 10, model.config.vocab_size, seed=i))
        losses.append(float(to_host(metrics["loss"])))
    if distributed.is_coordinator():
        with open(Path(args.out) / "metrics.jsonl", "w") as f:
            for i, loss in enumerate(losses):
                f.write(json.dumps({"step": i + 1, "loss": loss}) + "\n")
    split_across_processes = [
        name for name, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
        if not x.is_fully_addressable and not x.is_fully_replicated
    ]
    params = to_host(state.params)
    flat = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    # Every process takes part in the export (gathers are collective); process 0 writes.
    qwen2.save_pretrained(state.model(), Path(args.out) / "export")
    return {"losses": losses, "params": flat, "process_count": jax.process_count(),
            "num_split_across_processes": len(split_across_processes)}


def die(args, info) -> dict:
    """Process ``--die-process`` exits abruptly after initialisation; the others enter a collective
    that can never complete and must be terminated by the coordination service, not hang."""
    import jax
    import numpy as np

    from disrouter_jax.sharding import MeshConfig, ShardingContext, make_mesh
    from disrouter_jax.training.state import shard_batch

    mesh = make_mesh(MeshConfig(fsdp=-1))
    x = shard_batch(np.ones((GLOBAL_ROWS, 3), np.float32), ShardingContext(mesh))
    (Path(args.out) / f"initialized{info.process_id}").write_text("ok")
    if info.process_id == args.die_process:
        # Die only once every peer is initialised: dying earlier (a loaded machine can take
        # seconds to start a peer's backend) tests a failed start, not a dead peer.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
                (Path(args.out) / f"initialized{i}").exists() for i in range(jax.process_count())):
            time.sleep(0.05)
        os._exit(1)
    to_host(jax.jit(lambda a: a.sum())(x))
    work.barrier("after_sum", timeout_s=600)
    return {"survived": True}


LADDER_COSTS = (0.1, 0.5, 0.9)
# (difficulty level, gold answer) of the scripted ladder agents (tests/cascade/scripted_agents.py).
LADDER_QUERIES = [(level % 4, "42" if i % 3 else "7") for i, level in enumerate((0, 3, 1, 2, 2, 0, 3, 1, 1))]


def cascade(args, info) -> dict:
    """Cascade evaluation over hosts: each process runs the whole cascade on its block of the
    queries with the agents on its own devices; process 0 writes the routing log and report."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.cascade.scripted_agents
    from tests.cascade import scripted_agents as sa

    from disrouter_jax.agents import AgentSpec, load_agent
    from disrouter_jax.cascade import engine
    from disrouter_jax.cascade.log import write_routing_log
    from disrouter_jax.cascade.report import build_report, write_report

    mesh = work.local_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    agents = [load_agent(AgentSpec(f"agent{k}", path, cost), mesh=mesh)
              for k, (path, cost) in enumerate(zip(args.agents.split(","), LADDER_COSTS))]
    queries = [engine.Query(example) for example in sa.make_queries(LADDER_QUERIES)]
    runner = engine.Cascade(agents, engine.EngineConfig(max_new_tokens=8, max_batch_size=8))
    records = []
    for alpha in (0.2, 0.8):
        records += work.map_over_processes(lambda block: runner.run(block, alpha).records, queries)
    report = build_report(records, runner.names, runner.costs)
    if distributed.is_coordinator():
        write_routing_log(Path(args.out) / "routing_log.jsonl", records)
        write_report(args.out, report)
    return {"records": [r.to_json() for r in records], "report": report,
            "local_queries": len(work.process_shard(queries))}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["compute", "sft", "die", "cascade"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--agents", help="comma-separated checkpoint dirs of the cascade, cheapest first")
    parser.add_argument("--die-process", type=int, default=1)
    args = parser.parse_args()
    info = distributed.initialize()
    result = {"compute": compute, "sft": sft, "die": die, "cascade": cascade}[args.mode](args, info)
    with open(Path(args.out) / f"process{info.process_id}.pkl", "wb") as f:
        pickle.dump(result, f)
    print(f"worker {args.mode} done: process {info.process_id} of {info.num_processes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
