"""Routing-log and outcome-table records: the model-independent contract of the evaluation.

Two JSONL files, one JSON object per line:

* ``routing_log.jsonl`` — one :class:`RoutingRecord` per method × query × α: which agents the
  query visited, each agent's own decision, the final agent, the response, correctness and cost.
  Every figure in ``report.json`` is recomputed from these lines (see ``report.build_report``).
* an outcome table (``outcomes.jsonl`` by convention) — one :class:`OutcomeRow` per query × α
  holding *every* pool agent's decision and correctness ("all agents" mode). From it
  ``replay.py``/``baselines.py``/``routers.py`` rebuild any routing without running a model.

Scoring rule shared by every method: a refusal is never a correct answer. ``correct`` of an agent
is the correctness of the answer it actually gave (``False`` when it refused); a forced answer
(``forced_correct``) is only ever used as the self-assessment label of a refusal.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from disrouter_jax import storage

ANSWER = "answer"
REFUSE = "refuse"
DECISIONS = (ANSWER, REFUSE)

IN_DOMAIN = "in_domain"
OUT_OF_DOMAIN = "out_of_domain"
DOMAINS = (IN_DOMAIN, OUT_OF_DOMAIN)

# Method name used by the self-routing cascade (engine and replay) in the routing log.
DISROUTER = "disrouter"


class RecordError(ValueError):
    """A JSONL line or record field is malformed; the message names the file, line and field."""


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise RecordError(f"{where}: {message}")


def _check_str(value: Any, where: str, name: str) -> str:
    _require(isinstance(value, str) and value != "", where, f"field {name!r} must be a non-empty string, got {value!r}")
    return value


def _check_bool(value: Any, where: str, name: str) -> bool:
    _require(isinstance(value, bool), where, f"field {name!r} must be true/false, got {value!r}")
    return value


def _check_optional_bool(value: Any, where: str, name: str) -> Optional[bool]:
    _require(value is None or isinstance(value, bool), where, f"field {name!r} must be true/false/null, got {value!r}")
    return value


def _check_number(value: Any, where: str, name: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    _require(ok, where, f"field {name!r} must be a finite number, got {value!r}")
    return float(value)


def _check_alpha(value: Any, where: str) -> float:
    alpha = _check_number(value, where, "alpha")
    _require(0.0 <= alpha <= 1.0, where, f"field 'alpha' must lie in [0, 1], got {alpha!r}")
    return alpha


def _check_decision(value: Any, where: str) -> str:
    _require(value in DECISIONS, where, f"field 'decision' must be one of {DECISIONS}, got {value!r}")
    return value


def _check_domain(value: Any, where: str) -> str:
    _require(value in DOMAINS, where, f"field 'domain' must be one of {DOMAINS}, got {value!r}")
    return value


def _check_keys(data: Mapping[str, Any], required: set, optional: set, where: str) -> None:
    _require(isinstance(data, Mapping), where, f"expected a JSON object, got {type(data).__name__}")
    missing = sorted(required - set(data))
    unknown = sorted(set(data) - required - optional)
    _require(not missing, where, f"missing field(s) {missing}")
    _require(not unknown, where, f"unknown field(s) {unknown}")


@dataclasses.dataclass(frozen=True)
class Visit:
    """One agent a query reached: its own decision and, where known, whether its answer is right.

    ``correct`` is the correctness of the agent's answer when it answered, of its forced answer
    when it refused and one was computed, and ``None`` when it refused without a forced answer.
    ``family``: the agent's model family (``qwen2``, ``llama``, ...), where known; written to the
    log only then, so logs of a pool without it read as before. It describes the agent, not the
    routing, so it takes no part in equality: a replay, which knows no models, equals the run.
    """

    agent: str
    decision: str
    correct: Optional[bool] = None
    family: Optional[str] = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        where = f"Visit(agent={self.agent!r})"
        _check_str(self.agent, where, "agent")
        _check_decision(self.decision, where)
        _check_optional_bool(self.correct, where, "correct")
        _require(not (self.decision == ANSWER and self.correct is None), where, "an answering visit needs 'correct'")
        if self.family is not None:
            _check_str(self.family, where, "family")

    def to_json(self) -> dict:
        out = {"agent": self.agent, "decision": self.decision, "correct": self.correct}
        return out if self.family is None else out | {"family": self.family}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> "Visit":
        _check_keys(data, {"agent", "decision"}, {"correct", "family"}, where)
        try:
            return cls(data["agent"], data["decision"], data.get("correct"), data.get("family"))
        except RecordError as error:
            raise RecordError(f"{where}: {error}") from None


@dataclasses.dataclass(frozen=True)
class RoutingRecord:
    """One line of routing_log.jsonl: how ``method`` handled one query under scenario ``alpha``."""

    query_id: str
    dataset: str
    alpha: float
    visited: tuple[Visit, ...]
    final_agent: str
    response: str
    correct: bool
    cost: float
    domain: str = IN_DOMAIN
    method: str = DISROUTER
    # True when the final agent refused too: scored wrong, counted in the metrics.
    forced_refusal: bool = False

    def __post_init__(self):
        where = f"RoutingRecord(method={self.method!r}, dataset={self.dataset!r}, query_id={self.query_id!r}, alpha={self.alpha!r})"
        _check_str(self.query_id, where, "query_id")
        _check_str(self.dataset, where, "dataset")
        _check_str(self.method, where, "method")
        _check_alpha(self.alpha, where)
        _check_domain(self.domain, where)
        _require(isinstance(self.response, str), where, f"field 'response' must be a string, got {self.response!r}")
        _check_bool(self.correct, where, "correct")
        _check_bool(self.forced_refusal, where, "forced_refusal")
        cost = _check_number(self.cost, where, "cost")
        _require(cost >= 0.0, where, f"field 'cost' must be >= 0, got {cost!r}")
        visited = tuple(self.visited)
        object.__setattr__(self, "visited", visited)
        _require(len(visited) > 0, where, "field 'visited' must list at least one agent")
        for visit in visited:
            _require(isinstance(visit, Visit), where, f"'visited' entries must be Visit, got {visit!r}")
        agents = [visit.agent for visit in visited]
        _require(len(set(agents)) == len(agents), where, f"an agent appears twice in 'visited': {agents}")
        _require(self.final_agent == visited[-1].agent, where,
                 f"'final_agent' {self.final_agent!r} must be the last visited agent {visited[-1].agent!r}")
        refused_at_end = visited[-1].decision == REFUSE
        _require(self.forced_refusal == refused_at_end, where,
                 f"'forced_refusal' is {self.forced_refusal} but the final agent's decision is {visited[-1].decision!r}")
        _require(not (refused_at_end and self.correct), where, "a refusal by the final agent cannot be correct")

    @property
    def key(self) -> tuple[str, float, str, str]:
        """Identity of the line: one record per (method, α, dataset, query)."""
        return (self.method, round(self.alpha, 6), self.dataset, self.query_id)

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "query_id": self.query_id,
            "dataset": self.dataset,
            "domain": self.domain,
            "alpha": self.alpha,
            "visited": [visit.to_json() for visit in self.visited],
            "final_agent": self.final_agent,
            "response": self.response,
            "correct": self.correct,
            "cost": self.cost,
            "forced_refusal": self.forced_refusal,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "routing record") -> "RoutingRecord":
        required = {"query_id", "dataset", "alpha", "visited", "final_agent", "response", "correct", "cost"}
        _check_keys(data, required, {"domain", "method", "forced_refusal"}, where)
        visited = data["visited"]
        _require(isinstance(visited, list), where, f"field 'visited' must be a list, got {visited!r}")
        visits = tuple(Visit.from_json(v, f"{where}: visited[{i}]") for i, v in enumerate(visited))
        try:
            return cls(
                query_id=data["query_id"], dataset=data["dataset"], alpha=data["alpha"], visited=visits,
                final_agent=data["final_agent"], response=data["response"], correct=data["correct"],
                cost=data["cost"], domain=data.get("domain", IN_DOMAIN), method=data.get("method", DISROUTER),
                forced_refusal=data.get("forced_refusal", visits[-1].decision == REFUSE if visits else False),
            )
        except RecordError as error:
            raise RecordError(f"{where}: {error}") from None


@dataclasses.dataclass(frozen=True)
class AgentOutcome:
    """One pool agent's behaviour on one query under one α ("all agents" mode).

    ``correct``: its actual reply is a correct answer (always ``False`` for a refusal).
    ``forced_correct``: when it refused and a forced answer was generated, that answer's
    correctness; ``None`` otherwise. ``answer_features``: small per-answer numbers recorded by the
    engine for answer-scoring baselines (e.g. mean token log-prob, length); may be empty.
    """

    agent: str
    decision: str
    correct: bool
    forced_correct: Optional[bool] = None
    answer_features: tuple[float, ...] = ()
    response: str = ""

    def __post_init__(self):
        where = f"AgentOutcome(agent={self.agent!r})"
        _check_str(self.agent, where, "agent")
        _check_decision(self.decision, where)
        _check_bool(self.correct, where, "correct")
        _check_optional_bool(self.forced_correct, where, "forced_correct")
        _require(not (self.decision == REFUSE and self.correct), where, "a refusal cannot be correct")
        _require(not (self.decision == ANSWER and self.forced_correct is not None), where,
                 "'forced_correct' only applies to a refusal")
        features = tuple(_check_number(f, where, "answer_features") for f in self.answer_features)
        object.__setattr__(self, "answer_features", features)
        _require(isinstance(self.response, str), where, f"field 'response' must be a string, got {self.response!r}")

    @property
    def assessed_correct(self) -> Optional[bool]:
        """Would the agent's (possibly forced) answer be right? ``None`` if unknown."""
        return self.correct if self.decision == ANSWER else self.forced_correct

    def visit(self) -> Visit:
        return Visit(self.agent, self.decision, self.assessed_correct)

    def to_json(self) -> dict:
        return {
            "agent": self.agent, "decision": self.decision, "correct": self.correct,
            "forced_correct": self.forced_correct, "answer_features": list(self.answer_features),
            "response": self.response,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> "AgentOutcome":
        _check_keys(data, {"agent", "decision", "correct"}, {"forced_correct", "answer_features", "response"}, where)
        features = data.get("answer_features", [])
        _require(isinstance(features, list), where, f"field 'answer_features' must be a list, got {features!r}")
        try:
            return cls(data["agent"], data["decision"], data["correct"], data.get("forced_correct"),
                       tuple(features), data.get("response", ""))
        except RecordError as error:
            raise RecordError(f"{where}: {error}") from None


@dataclasses.dataclass(frozen=True)
class OutcomeRow:
    """Every pool agent's outcome on one query under one α, in pool order."""

    query_id: str
    dataset: str
    alpha: float
    outcomes: tuple[AgentOutcome, ...]
    domain: str = IN_DOMAIN

    def __post_init__(self):
        where = f"OutcomeRow(dataset={self.dataset!r}, query_id={self.query_id!r}, alpha={self.alpha!r})"
        _check_str(self.query_id, where, "query_id")
        _check_str(self.dataset, where, "dataset")
        _check_alpha(self.alpha, where)
        _check_domain(self.domain, where)
        outcomes = tuple(self.outcomes)
        object.__setattr__(self, "outcomes", outcomes)
        _require(len(outcomes) > 0, where, "field 'outcomes' must list at least one agent")
        agents = [o.agent for o in outcomes]
        _require(len(set(agents)) == len(agents), where, f"an agent appears twice in 'outcomes': {agents}")

    @property
    def key(self) -> tuple[float, str, str]:
        return (round(self.alpha, 6), self.dataset, self.query_id)

    @property
    def query_key(self) -> tuple[str, str]:
        return (self.dataset, self.query_id)

    def outcome(self, agent: str) -> AgentOutcome:
        for outcome in self.outcomes:
            if outcome.agent == agent:
                return outcome
        raise KeyError(f"agent {agent!r} has no outcome for dataset={self.dataset!r} query_id={self.query_id!r} "
                       f"alpha={self.alpha!r}; recorded agents: {[o.agent for o in self.outcomes]}")

    def to_json(self) -> dict:
        return {
            "query_id": self.query_id, "dataset": self.dataset, "domain": self.domain, "alpha": self.alpha,
            "outcomes": [o.to_json() for o in self.outcomes],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "outcome row") -> "OutcomeRow":
        _check_keys(data, {"query_id", "dataset", "alpha", "outcomes"}, {"domain"}, where)
        outcomes = data["outcomes"]
        _require(isinstance(outcomes, list), where, f"field 'outcomes' must be a list, got {outcomes!r}")
        parsed = tuple(AgentOutcome.from_json(o, f"{where}: outcomes[{i}]") for i, o in enumerate(outcomes))
        try:
            return cls(data["query_id"], data["dataset"], data["alpha"], parsed, data.get("domain", IN_DOMAIN))
        except RecordError as error:
            raise RecordError(f"{where}: {error}") from None


# ----------------------------------------------------------------------------- JSONL I/O


def _check_complete_tail(path: Path) -> None:
    """Refuse to append after a partial last line (an interrupted write) instead of gluing onto it."""
    if storage.is_url(path):
        data = path.read_bytes() if path.exists() else b""
        if not data:
            return
        last = data[-1:]
    else:
        if not path.exists() or path.stat().st_size == 0:
            return
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            last = handle.read(1)
    if last != b"\n":
        raise RecordError(f"{path}: last line is incomplete (no trailing newline; interrupted write?); "
                          "fix or remove that line before appending")


def append_jsonl(path: str | os.PathLike, objects: Iterable[Mapping[str, Any]]) -> int:
    """Append one JSON object per line and flush+fsync; returns the number of lines written.

    Append-safe: each call writes whole lines, never rewrites existing ones, and refuses to
    continue a file whose last line is incomplete.
    """
    path = storage.path(path)
    _check_complete_tail(path)
    lines = [json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n" for obj in objects]
    storage.append_text(path, "".join(lines))
    return len(lines)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Yield ``(where, object)`` per non-blank line; ``where`` is ``"file:line"`` for error messages."""
    path = storage.path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such JSONL file")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            where = f"{path}:{number}"
            if not line.strip():
                continue
            if not line.endswith("\n"):
                raise RecordError(f"{where}: last line is incomplete (no trailing newline; interrupted write?)")
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
            yield where, data


def _read_unique(path, parse, key_name: str) -> list:
    records, seen = [], {}
    for where, data in iter_jsonl(path):
        record = parse(data, where)
        if record.key in seen:
            raise RecordError(f"{where}: duplicate {key_name} {record.key} (first at {seen[record.key]})")
        seen[record.key] = where
        records.append(record)
    return records


def write_routing_log(path: str | os.PathLike, records: Iterable[RoutingRecord]) -> int:
    """Append routing records to ``path`` (routing_log.jsonl)."""
    return append_jsonl(path, (record.to_json() for record in records))


def read_routing_log(path: str | os.PathLike) -> list[RoutingRecord]:
    """Read every record; a malformed line or a repeated (method, α, dataset, query) raises naming file:line."""
    return _read_unique(path, RoutingRecord.from_json, "(method, alpha, dataset, query_id)")


def write_outcome_table(path: str | os.PathLike, rows: Iterable[OutcomeRow]) -> int:
    """Append outcome rows to ``path`` (outcomes.jsonl)."""
    return append_jsonl(path, (row.to_json() for row in rows))


def read_outcome_table(path: str | os.PathLike) -> list[OutcomeRow]:
    """Read every outcome row; malformed or repeated (α, dataset, query) lines raise naming file:line."""
    return _read_unique(path, OutcomeRow.from_json, "(alpha, dataset, query_id)")


def with_families(records: Iterable[RoutingRecord], families: Mapping[str, str]) -> list[RoutingRecord]:
    """``records`` with each visit naming its agent's family (``families[agent]``, where given)."""
    def named(visit: Visit) -> Visit:
        return dataclasses.replace(visit, family=families.get(visit.agent, visit.family))

    return [dataclasses.replace(r, visited=tuple(named(v) for v in r.visited)) for r in records]


def record_families(records: Iterable[RoutingRecord]) -> dict[str, str]:
    """Agent -> family for every visit that names one."""
    return {v.agent: v.family for r in records for v in r.visited if v.family is not None}


def completed_keys(records: Sequence[RoutingRecord]) -> set:
    """Keys already logged, so a resumed run can skip them instead of writing duplicates."""
    return {record.key for record in records}
