"""disrouter_jax.storage on a local directory and on a real GCS JSON API served on 127.0.0.1.

The session's emulator (``gcs_emulator`` in tests/conftest.py, its own process: the last test
stops it to play a store that goes away, then starts it again); every test writes under its own
prefix of the one bucket.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from disrouter_jax import storage
from tests.storage.emulator import BUCKET, use_in_this_process


@pytest.fixture
def emulator(gcs_emulator):
    return gcs_emulator


@pytest.fixture
def gcs(emulator, monkeypatch, tmp_path, request):
    """A fresh prefix on the emulated bucket; this process reaches it; the local cache is per test."""
    use_in_this_process(emulator.url, monkeypatch)
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # a path named after the URL would appear here
    return f"gs://{BUCKET}/{request.node.name}"


def no_url_named_dirs(root: pathlib.Path) -> None:
    assert not [p for p in root.iterdir() if p.name in ("gs:", "s3:")], sorted(os.listdir(root))


def test_local_paths_stay_pathlib_and_writes_are_atomic(tmp_path):
    target = tmp_path / "a" / "report.json"
    assert isinstance(storage.path(str(target)), pathlib.Path)
    storage.write_text(target, "one\n")
    storage.write_text(target, "two\n")  # replaced whole, no temporary left beside it
    storage.append_text(target, "three\n")
    assert target.read_text() == "two\nthree\n" and os.listdir(target.parent) == ["report.json"]


def test_a_write_that_fails_part_way_leaves_the_old_file(tmp_path):
    target = tmp_path / "labels.jsonl"
    storage.write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="disk gone"):
        with storage.atomic_file(target, "w", encoding="utf-8") as handle:
            handle.write("half of the new")
            raise RuntimeError("disk gone")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["labels.jsonl"]
    with storage.atomic_file(target, "w", encoding="utf-8") as handle:
        handle.write("new\n")
    assert target.read_text() == "new\n" and os.listdir(tmp_path) == ["labels.jsonl"]
    # Permissions as a plain open gives them (the umask's), not a private temporary file's 0600.
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert target.stat().st_mode == plain.stat().st_mode


def test_a_url_that_went_through_pathlib_is_refused():
    assert storage.is_url("gs://b/x") and storage.is_url("s3://b/x") and not storage.is_url("/gs/b")
    with pytest.raises(ValueError, match=r"'gs:/b/run'.*gs://bucket"):
        storage.path(str(pathlib.Path("gs://b/run")))  # pathlib makes it "gs:/b/run"


def test_object_store_files_trees_and_the_local_cache(gcs, tmp_path):
    run = storage.path(gcs)
    storage.write_text(run / "labels" / "labels.jsonl", '{"a": 1}\n')
    storage.append_text(run / "labels" / "labels.jsonl", '{"a": 2}\n')
    assert storage.read_text(run / "labels" / "labels.jsonl") == '{"a": 1}\n{"a": 2}\n'
    assert sorted(p.name for p in run.iterdir()) == ["labels"]

    local = tmp_path / "agent"
    (local / "sub").mkdir(parents=True)
    (local / "model.safetensors").write_bytes(b"\0" * 100)
    (local / "sub" / "tokenizer.json").write_text("{}")
    (local / "config.json").write_text('{"x": 1}')
    storage.upload_tree(local, run / "agent", last=("config.json",))
    cached = storage.local_dir(run / "agent")
    assert cached.is_relative_to(tmp_path / "cache")
    assert {str(p.relative_to(cached)) for p in cached.rglob("*") if p.is_file()} == {
        "model.safetensors", "sub/tokenizer.json", "config.json", ".disrouter-cache.json"}
    # A changed object is fetched again; a deleted one leaves the cache; the rest stay.
    (local / "config.json").write_text('{"x": 22}')
    (local / "sub" / "tokenizer.json").unlink()
    storage.upload_tree(local, run / "agent")
    assert storage.local_dir(run / "agent") == cached
    assert (cached / "config.json").read_text() == '{"x": 22}' and not (cached / "sub" / "tokenizer.json").exists()
    no_url_named_dirs(tmp_path)


def test_metrics_and_reports_on_the_store(gcs, tmp_path):
    from disrouter_jax.cascade import report
    from disrouter_jax.training.metrics import MetricsWriter, read_metrics

    with MetricsWriter(gcs, enabled=True) as writer:
        for step in (1, 2, 3):
            writer.write(step, {"loss": 1.0 / step})
    with MetricsWriter(gcs, resume_step=2, enabled=True) as writer:  # a resume drops later records
        writer.write(3, {"loss": 0.25})
    assert read_metrics(f"{gcs}/metrics.jsonl") == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5},
                                                    {"step": 3, "loss": 0.25}]
    assert any(p.name.startswith("events.out.tfevents") for p in storage.path(f"{gcs}/tensorboard").iterdir())

    report.write_report(gcs, {"a": 1})
    report.write_report(gcs, {"a": 2})  # the previous one is kept aside, as on POSIX
    assert json.loads(storage.read_text(f"{gcs}/report.json")) == {"a": 2}
    assert json.loads(storage.read_text(f"{gcs}/report.prev-001.json")) == {"a": 1}
    no_url_named_dirs(tmp_path)


def test_orbax_checkpoints_on_the_store_restore(gcs):
    from disrouter_jax.training.checkpoint import TrainCheckpointer
    from disrouter_jax.training.optim import OptimConfig
    from disrouter_jax.training.state import create_train_state
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    state = create_train_state(model, OptimConfig(learning_rate=0.1, total_steps=2))
    with TrainCheckpointer(f"{gcs}/checkpoints", async_save=True) as ckpt:
        ckpt.save(2, state, data_position=2, rng_key=jax.random.key(5))
    fresh = create_train_state(nnx.Linear(3, 2, rngs=nnx.Rngs(1)), OptimConfig(learning_rate=0.1, total_steps=2))
    with TrainCheckpointer(f"{gcs}/checkpoints") as ckpt:
        assert ckpt.all_steps() == [2]
        restored = ckpt.restore(fresh)
    assert restored.step == 2 and restored.data_position == 2
    for a, b in zip(jax.tree.leaves(nnx.state(state.model(), nnx.Param)),
                    jax.tree.leaves(nnx.state(restored.state.model(), nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jnp.array_equal(jax.random.key_data(restored.rng_key), jax.random.key_data(jax.random.key(5)))


def test_from_pretrained_and_save_pretrained_on_the_store(gcs, tiny_checkpoint, tmp_path):
    """An agent read from a bucket (through the local cache) is the local one, tensor for tensor;
    one saved to a bucket is uploaded whole, config.json last, and refuses to be overwritten."""
    from flax import nnx

    from disrouter_jax.models import hf_io

    local = tiny_checkpoint("gqa2")
    storage.upload_tree(local, f"{gcs}/agent", last=("config.json",))
    from_bucket = hf_io.from_pretrained(f"{gcs}/agent")
    from_disk = hf_io.from_pretrained(local)
    flat = lambda m: dict(nnx.to_flat_state(nnx.state(m, nnx.Param)))  # noqa: E731
    for key, value in flat(from_disk).items():
        np.testing.assert_array_equal(np.asarray(flat(from_bucket)[key].get_value()), np.asarray(value.get_value()))
    hf_io.save_pretrained(from_bucket, f"{gcs}/saved")
    assert storage.path(f"{gcs}/saved/config.json").is_file()
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        hf_io.save_pretrained(from_bucket, f"{gcs}/saved")
    again = hf_io.from_pretrained(f"{gcs}/saved")
    for key, value in flat(from_disk).items():
        np.testing.assert_array_equal(np.asarray(flat(again)[key].get_value()), np.asarray(value.get_value()))
    no_url_named_dirs(tmp_path)


def test_a_store_that_stops_gives_a_named_error(emulator, gcs, monkeypatch):
    import types

    import gcsfs.retry

    async def no_wait(seconds):
        return None

    storage.write_text(f"{gcs}/alive.txt", "yes")
    # gcsfs retries a dead host 6 times over ~30 s of back-off: the same retries, without the waits.
    monkeypatch.setattr(gcsfs.retry, "asyncio", types.SimpleNamespace(sleep=no_wait))
    emulator.stop()
    try:
        with pytest.raises(storage.StorageError, match=rf"{gcs}/report.json: object-store write failed .*reachable"):
            storage.write_text(f"{gcs}/report.json", "{}")
    finally:
        emulator.start()  # same port: the module's other tests keep their store


@pytest.mark.parametrize("process", [0, 1])
def test_only_process_0_builds_the_toy_pool_and_the_others_read_it_after_the_barrier(process, monkeypatch, tmp_path):
    """The rule of the 2-process race (both processes built the pool into one workdir): process 0
    builds or reuses it, every process waits at one barrier, the others then only read it."""
    from types import SimpleNamespace

    from disrouter_jax import pipeline
    from disrouter_jax.toy import pool as toy_pool
    from tests.conftest import load_config_module

    events = []
    agent = SimpleNamespace(name="toy-xs", path=tmp_path / "pool" / "agents" / "toy-xs", cost=0.1)
    fake_pool = SimpleNamespace(agents=[agent])
    monkeypatch.setattr(storage, "is_writer", lambda: process == 0)
    monkeypatch.setattr(storage, "barrier", lambda name, **kw: events.append(("barrier", name)))
    monkeypatch.setattr(toy_pool, "build_pool", lambda root, *a, **kw: events.append(("build", str(root))) or fake_pool)
    monkeypatch.setattr(toy_pool, "load_pool", lambda root: events.append(("load", str(root))) or fake_pool)
    config = load_config_module("rl_alpha05.py").get_config("toy")
    config.pool.dir = str(tmp_path / "pool")
    specs = pipeline.ensure_pool(config, tmp_path / "work")
    root = str(tmp_path / "pool")
    assert events == ([("build", root), ("barrier", f"toy-pool:{root}")] if process == 0
                      else [("barrier", f"toy-pool:{root}"), ("load", root)])
    assert [(s.name, s.path, s.cost) for s in specs] == [("toy-xs", str(agent.path), 0.1)]
