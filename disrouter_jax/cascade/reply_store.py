"""A per-agent cache of engine replies under the workdir, so a re-run reuses finished generation.

``<dir>/<agent>.jsonl`` holds one :class:`engine.Reply` per line with its prompt mode ("plain" or
the α) and query key; ``<dir>/<agent>.meta.json`` records what produced them (the agent's weights
path and the generation settings that change replies). A different producer is an error naming
the file, never a silent mix. Lines are appended whole and fsynced (``log.append_jsonl``), so an
interrupted run loses at most the batch it was generating.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from disrouter_jax import storage
from disrouter_jax.cascade import engine
from disrouter_jax.cascade.log import append_jsonl, iter_jsonl

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class StoreMismatch(ValueError):
    """Cached replies were produced by another agent or other generation settings."""


def producer(agent, config: engine.EngineConfig) -> dict:
    """What determines an agent's replies: its weights and the generation settings."""
    return {
        "agent": agent.name,
        "path": (str(agent.spec.path) if storage.is_url(agent.spec.path) or not Path(agent.spec.path).exists()
                 else str(Path(agent.spec.path).resolve())),
        "max_new_tokens": config.max_new_tokens,
        "early_refusal": config.early_refusal,
        "dtype": str(getattr(agent.model, "dtype", "")),
    }


class ReplyStore:
    def __init__(self, directory: str | os.PathLike):
        self.directory = storage.path(directory)
        self._lock = threading.Lock()
        self._loaded: dict[str, dict[tuple, engine.Reply]] = {}

    def _paths(self, agent_name: str) -> tuple[Path, Path]:
        stem = _SAFE_NAME.sub("_", agent_name)
        return self.directory / f"{stem}.jsonl", self.directory / f"{stem}.meta.json"

    def _check_producer(self, agent, config) -> None:
        _, meta_path = self._paths(agent.name)
        want = producer(agent, config)
        if meta_path.exists():
            have = json.loads(meta_path.read_text(encoding="utf-8"))
            if have != want:
                diff = {k: (have.get(k), want.get(k)) for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)}
                raise StoreMismatch(
                    f"{meta_path}: cached replies of agent {agent.name!r} were produced with different settings "
                    f"(cached, now): {diff}. Use a new --workdir, or delete {meta_path.parent} to regenerate.")
        else:
            storage.write_text(meta_path, json.dumps(want, indent=2) + "\n")

    def _cache(self, agent_name: str) -> dict[tuple, engine.Reply]:
        with self._lock:
            if agent_name not in self._loaded:
                data_path, _ = self._paths(agent_name)
                cache = {}
                if data_path.exists():
                    for where, line in iter_jsonl(data_path):
                        try:
                            key = (line["mode"], line["dataset"], line["query_id"])
                            cache[key] = engine.Reply.from_json(line["reply"])
                        except (KeyError, TypeError, ValueError) as error:
                            raise ValueError(f"{where}: malformed cached reply ({error})") from None
                self._loaded[agent_name] = cache
            return self._loaded[agent_name]

    def replies(self, agent, queries: Sequence[engine.Query], alpha: float | None,
                config: engine.EngineConfig) -> list[engine.Reply]:
        """Cached replies where present; the rest generated (one ``agent_replies`` call) and saved."""
        self._check_producer(agent, config)
        mode = engine.mode_key(alpha)
        cache = self._cache(agent.name)
        missing = [q for q in queries if (mode, q.dataset, q.query_id) not in cache]
        if missing:
            fresh = engine.agent_replies(agent, missing, alpha, config)
            lines = [{"mode": mode, "dataset": q.dataset, "query_id": q.query_id, "reply": r.to_json()}
                     for q, r in zip(missing, fresh)]
            append_jsonl(self._paths(agent.name)[0], lines)
            for q, r in zip(missing, fresh):
                cache[(mode, q.dataset, q.query_id)] = r
        return [cache[(mode, q.dataset, q.query_id)] for q in queries]

    def count(self, agent_name: str) -> Mapping[str, int]:
        """Cached replies per mode (for logs)."""
        counts: dict[str, int] = {}
        for mode, _, _ in self._cache(agent_name):
            counts[mode] = counts.get(mode, 0) + 1
        return counts
