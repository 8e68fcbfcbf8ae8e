import json

import jax.numpy as jnp
import numpy as np
import pytest

from disrouter_jax.training.metrics import METRICS_FILE, TENSORBOARD_DIR, MetricsWriter, read_metrics


def test_one_json_line_per_step_and_tensorboard_events(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": jnp.float32(2.5), "lr": 1e-3, "num_tokens": np.int32(12)})
        record = writer.write(2, {"loss": jnp.float32(jnp.nan), "grad_norm": float("inf"), "note": "warmup"})
    assert record == {"step": 2, "loss": "nan", "grad_norm": "inf", "note": "warmup"}
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": 2.5, "lr": 1e-3, "num_tokens": 12},
        {"step": 2, "loss": "nan", "grad_norm": "inf", "note": "warmup"},
    ]
    events = list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_resume_drops_records_after_the_checkpoint_step_and_appends(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        for step in range(1, 6):
            writer.write(step, {"loss": float(step)})
    (tmp_path / METRICS_FILE).open("a").write('{"step": 6, "loss"')  # torn line from a crash
    with MetricsWriter(tmp_path, resume_step=3, tensorboard=False) as writer:
        writer.write(4, {"loss": 40.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / METRICS_FILE)] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)
    ]


def test_disabled_writer_writes_nothing_and_bad_metrics_are_rejected(tmp_path):
    with MetricsWriter(tmp_path / "off", enabled=False) as writer:
        assert writer.write(1, {"loss": 1.0}) == {"step": 1, "loss": 1.0}
    assert not (tmp_path / "off").exists()
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(ValueError, match="metric 'loss_bt' must be a scalar"):
            writer.write(1, {"loss_bt": np.zeros((2, 3))})
        with pytest.raises(ValueError, match="reserved"):
            writer.write(1, {"step": 1})
