"""Per-step metrics: one JSON line per step in ``workdir/metrics.jsonl`` plus TensorBoard events.

Only process 0 writes (``jax.process_index() == 0``); on other processes the writer is a no-op.
Resume-safe: opened with ``resume_step=k``, lines of steps > k left by an interrupted run are
dropped first (they will be recomputed), and TensorBoard purges its events after k, so neither
holds duplicated steps. Non-finite values are written as the strings "nan", "inf", "-inf" (strict
JSON has no NaN) and skipped in TensorBoard.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from disrouter_jax import storage

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _to_python(name: str, value: Any):
    if isinstance(value, (str, bool)) or value is None:
        return value
    array = np.asarray(jax.device_get(value))
    if array.size != 1:
        raise ValueError(f"metric {name!r} must be a scalar, got shape {array.shape}")
    number = array.reshape(()).item()
    if isinstance(number, float) and not math.isfinite(number):
        return "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
    return number


def read_metrics(path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file (a torn last line from a crash is ignored)."""
    records = []
    path = storage.path(path)
    if not path.exists():
        return records
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class MetricsWriter:
    """``write(step, metrics)`` -> appends ``{"step": step, **metrics}`` and TensorBoard scalars.

    Args:
      workdir: the run's work directory (created if missing).
      resume_step: the step the run resumes from (its checkpoint step); later records are dropped.
      tensorboard: also write TensorBoard events under ``workdir/tensorboard``.
      enabled: override the process-0 rule (tests).
    """

    def __init__(self, workdir, *, resume_step: int | None = None, tensorboard: bool = True, enabled: bool | None = None):
        self.enabled = (jax.process_index() == 0) if enabled is None else bool(enabled)
        self.path = storage.join(workdir, METRICS_FILE)
        self._file = None
        self._tb = None
        self._tb_upload = None  # object store: (local event directory, its URL)
        self._remote = storage.is_url(self.path)
        if not self.enabled:
            return
        if not self._remote:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(int(resume_step))
        # An object store cannot append: each record rewrites the (small) object instead.
        self._file = None if self._remote else self.path.open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else int(resume_step) + 1
            logdir = str(self.path.parent / TENSORBOARD_DIR)
            if self._remote:
                # tensorboardX writes local files; they are uploaded on flush and close.
                local = tempfile.mkdtemp(prefix="disrouter-tb-")
                self._tb_upload = (local, self.path.parent / TENSORBOARD_DIR)
                logdir = local
            self._tb = SummaryWriter(logdir=logdir, purge_step=purge)

    def _truncate_after(self, step: int) -> None:
        kept = [r for r in read_metrics(self.path) if isinstance(r.get("step"), int) and r["step"] <= step]
        storage.write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Writes one record (a host sync for device values) and returns it."""
        record = {"step": int(step)}
        for name, value in metrics.items():
            if name == "step":
                raise ValueError("metric name 'step' is reserved")
            record[str(name)] = _to_python(str(name), value)
        if not self.enabled:
            return record
        if self._remote:
            storage.append_text(self.path, json.dumps(record) + "\n")
        else:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(name, value, global_step=int(step))
        return record

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()
            self._upload_tensorboard()

    def _upload_tensorboard(self) -> None:
        if self._tb_upload is None:
            return
        local, url = self._tb_upload
        for event_file in sorted(Path(local).rglob("*")):
            if event_file.is_file():
                storage.write_bytes(url / str(event_file.relative_to(local)), event_file.read_bytes())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
            self._upload_tensorboard()
            if self._tb_upload is not None:
                shutil.rmtree(self._tb_upload[0], ignore_errors=True)
                self._tb_upload = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
