"""The evaluation's tables in the workdir: outcome tables, the routing log, the query features and
the manifest that keeps one workdir to one set of settings.

Everything here is reused on a re-run: a table gets only the rows it lacks, the routing log only
the records it lacks (logged lines win), the features are computed once.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from disrouter_jax import storage
from disrouter_jax.cascade import engine, log
from disrouter_jax.cascade.features import mean_pooled_hidden_states
from disrouter_jax.cascade.replies import BASE_PLAIN

PLAIN_OUTCOMES_FILE = "plain_outcomes.jsonl"
ROUTER_TRAIN_FILE = "router_train_outcomes.jsonl"
QUERY_FEATURES_FILE = "eval/query_features.npz"
MANIFEST_FILE = "eval/manifest.json"


def outcome_tables(queries, alphas: Sequence[float], pool: Sequence[str], replies: Mapping) -> tuple[dict, dict]:
    """(scenario rows, plain rows) per α from ``replies`` (``replies.all_replies``). Scenario rows:
    what the cascade sees (empty when ``replies`` has no α-prompted replies); plain rows: every
    agent on the plain prompt, from the baseline pool (:data:`replies.BASE_PLAIN`)."""
    scenario = ({a: engine.outcome_rows(queries, a, pool, replies[engine.mode_key(a)], replies[engine.PLAIN])
                 for a in alphas} if all(engine.mode_key(a) in replies for a in alphas) else {})
    plain = {a: engine.plain_outcome_rows(queries, a, pool, replies[BASE_PLAIN]) for a in alphas}
    return scenario, plain


def check_manifest(path: Path, manifest: dict) -> None:
    """Refuse a workdir evaluated with other settings (its logs would mix two evaluations)."""
    if path.exists():
        have = json.loads(path.read_text(encoding="utf-8"))
        if have != manifest:
            diff = sorted(k for k in set(have) | set(manifest) if have.get(k) != manifest.get(k))
            raise ValueError(
                f"{path}: this workdir was evaluated with different settings ({', '.join(diff)} differ). Use a new "
                f"--workdir, or remove {path}, the *.jsonl tables and routing_log.jsonl next to it to re-evaluate "
                "(eval/replies/ keeps reusable generations).")
        return
    storage.write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def sync_table(path: Path, rows: Sequence[log.OutcomeRow]) -> None:
    """Append the outcome rows the file lacks (a finished file is left as it is)."""
    have = {row.key for row in log.read_outcome_table(path)} if path.exists() else set()
    log.write_outcome_table(path, [row for row in rows if row.key not in have])


def sync_routing_log(path: Path, records: Sequence[log.RoutingRecord]) -> list[log.RoutingRecord]:
    """Append missing records; return the log's records for the keys asked (logged lines win)."""
    existing = {r.key: r for r in log.read_routing_log(path)} if path.exists() else {}
    log.write_routing_log(path, [r for r in records if r.key not in existing])
    return [existing.get(r.key, r) for r in records]


def read_query_features(path: Path) -> tuple[list, np.ndarray]:
    """(keys, [Q, D] features) as :func:`cached_query_features` stored them."""
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
        return [tuple(k) for k in data["keys"].tolist()], data["features"]


def cached_query_features(path: Path, model, prompts_by_key: dict, batch_size: int) -> tuple[list, np.ndarray]:
    """Mean-pooled hidden states per (dataset, query_id), computed once and kept in ``path``."""
    keys = sorted(prompts_by_key)
    if path.exists():
        cached = dict(zip(*read_query_features(path)))
        if all(k in cached for k in keys):
            return keys, np.stack([cached[k] for k in keys])
    features = mean_pooled_hidden_states(model, [prompts_by_key[k] for k in keys], batch_size=batch_size)
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.asarray(keys, dtype=str), features=features)
    storage.write_bytes(path, buffer.getvalue())
    return keys, features
