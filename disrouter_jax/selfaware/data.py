"""Data preparation for self-awareness training: labelled records, SFT targets, padded batches.

Pure Python / numpy; no model or tokenizer here (callers tokenize and hand in ids).

Pipeline::

    labelling (writes LabelRecord JSONL)  ->  read_labels_jsonl  ->  sft_targets(alpha)
      -> [caller builds the prompt with the scenario instruction and tokenizes]
      -> tokenize_sft_example -> bucket_pad_batch -> jitted SFT step

    RL: alpha_schedule draws the scenario alpha written into each RL prompt.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from disrouter_jax import storage
from disrouter_jax.tasks.prompts import REFUSAL

logger = logging.getLogger(__name__)

# p(x) is a ratio of counts (k / N) and 1 - alpha is a float difference: 1 - 0.7 > 0.3 in floating
# point, so compare with this slack or p = 3/10 would wrongly fall below delta = 1 - 0.7.
DELTA_TOLERANCE = 1e-9


# --------------------------------------------------------------------------------------------
# Labelled records
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelRecord:
    """One training query labelled with an agent's own correctness frequency.

    Fields:
      agent: id of the agent that was sampled (e.g. its model name / pool key).
      task: dataset name (e.g. "gsm8k").
      query_id: id of the query, unique within (agent, task).
      p_correct: fraction of the ``num_samples`` sampled responses the task checker judged correct.
      num_samples: N, the number of responses sampled (>= 1).
      correct_response: one of the agent's own responses judged correct (the SFT "answer" target);
        must be given iff ``p_correct > 0``, and is never the refusal text.
      prompt_question: the question as the task formats it for the agent, *without* the scenario
        instruction (the SFT / RL stages add the scenario for their alpha).
      gold: the gold answer in whatever JSON-serialisable form the task checker takes
        (RL rollouts are scored against it).
      meta: optional JSON-serialisable provenance (temperature, checkpoint, ...).
    """

    agent: str
    task: str
    query_id: str
    p_correct: float
    num_samples: int
    correct_response: str | None
    prompt_question: str
    gold: Any
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in ("agent", "task", "query_id", "prompt_question"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"LabelRecord.{name} must be a non-empty string, got {value!r}")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"LabelRecord.num_samples must be an int >= 1, got {self.num_samples!r}")
        if isinstance(self.p_correct, bool) or not isinstance(self.p_correct, (int, float)):
            raise ValueError(f"LabelRecord.p_correct must be a number, got {self.p_correct!r}")
        if not 0.0 <= self.p_correct <= 1.0:
            raise ValueError(f"LabelRecord.p_correct must lie in [0, 1], got {self.p_correct!r}")
        num_correct = self.p_correct * self.num_samples
        if abs(num_correct - round(num_correct)) > 1e-6:
            raise ValueError(
                f"LabelRecord.p_correct={self.p_correct!r} is not k/{self.num_samples} for an integer "
                f"k (num_samples={self.num_samples})"
            )
        if self.correct_response is not None and not isinstance(self.correct_response, str):
            raise ValueError(f"LabelRecord.correct_response must be a string or None, got {self.correct_response!r}")
        if self.p_correct > 0 and not self.correct_response:
            raise ValueError(
                f"LabelRecord {self.query_id!r}: p_correct={self.p_correct!r} > 0 needs a correct_response"
            )
        if self.p_correct == 0 and self.correct_response is not None:
            raise ValueError(
                f"LabelRecord {self.query_id!r}: p_correct=0 but correct_response={self.correct_response!r}"
            )
        if self.correct_response is not None and self.correct_response.strip() == REFUSAL:
            raise ValueError(f"LabelRecord {self.query_id!r}: the refusal cannot be a correct response")
        if not isinstance(self.meta, dict):
            raise ValueError(f"LabelRecord.meta must be a dict, got {self.meta!r}")

    @property
    def num_correct(self) -> int:
        return round(self.p_correct * self.num_samples)

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, data: Any) -> "LabelRecord":
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        unknown = sorted(set(data) - names)
        missing = sorted(required - set(data))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        return cls(**data)


class LabelFileError(ValueError):
    """A labels JSONL file is malformed; the message names the file and the 1-based line."""


def write_labels_jsonl(path: str | os.PathLike, records: Iterable[LabelRecord], *, overwrite: bool = False) -> int:
    """Write records as JSON Lines, atomically; returns the number written.

    Refuses (FileExistsError) when ``path`` exists unless ``overwrite=True``: labels are expensive
    to produce and the workdir contract is that nothing is silently overwritten. The file is first
    written to a temporary file in the same directory, fsynced and then renamed over ``path``, so a
    crash never leaves a half-written labels file under the final name.
    """
    path = storage.path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if storage.is_url(path):
        lines = [_label_line(path, record) for record in records]
        storage.write_text(path, "".join(lines))  # one put: the object appears whole or not at all
        return len(lines)
    count = 0
    with storage.atomic_file(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(_label_line(path, record))
            count += 1
    return count


def _label_line(path, record) -> str:
    if not isinstance(record, LabelRecord):
        raise TypeError(f"write_labels_jsonl({path}): expected LabelRecord, got {type(record).__name__}")
    return json.dumps(record.to_json_dict(), ensure_ascii=False, allow_nan=False) + "\n"


def read_labels_jsonl(path: str | os.PathLike) -> list[LabelRecord]:
    """Read records written by :func:`write_labels_jsonl`. Blank lines are skipped.

    Raises LabelFileError naming ``path:line`` for invalid JSON, unknown / missing fields or
    values that fail LabelRecord validation, and for duplicate (agent, task, query_id) keys.
    """
    path = storage.path(path)
    records: list[LabelRecord] = []
    first_line_of: dict[tuple[str, str, str], int] = {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = LabelRecord.from_json_dict(json.loads(line))
            except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
                raise LabelFileError(f"{path}:{line_no}: bad label record: {err}") from err
            key = (record.agent, record.task, record.query_id)
            if key in first_line_of:
                raise LabelFileError(f"{path}:{line_no}: duplicate record {key}, first on line {first_line_of[key]}")
            first_line_of[key] = line_no
            records.append(record)
    return records


# --------------------------------------------------------------------------------------------
# SFT targets
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """One SFT example: the caller turns (alpha, prompt_question) into the scenario prompt."""

    agent: str
    task: str
    query_id: str
    alpha: float
    prompt_question: str
    response: str  # the agent's own correct response, or exactly REFUSAL
    answers: bool  # True: target is an answer (p >= delta); False: target is REFUSAL
    p_correct: float


def sft_delta(alpha: float) -> float:
    """SFT labelling threshold delta = 1 - alpha: answer when p(x) >= delta."""
    _check_alpha(alpha, "alpha")
    return 1.0 - alpha


def should_answer(p_correct: float, alpha: float) -> bool:
    """SFT label: answer iff p >= 1 - alpha (with DELTA_TOLERANCE slack; p == delta answers)."""
    return p_correct >= sft_delta(alpha) - DELTA_TOLERANCE


def _check_alpha(alpha: Any, name: str) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {alpha!r}")


def balanced_counts(num_accept: int, num_reject: int, balance: float) -> tuple[int, int]:
    """Largest (accept, reject) counts <= the available ones whose accept fraction is ``balance``.

    Only the class that is over-represented relative to ``balance`` is down-sampled.
    """
    if num_accept * (1.0 - balance) >= num_reject * balance:
        keep_reject = num_reject
        keep_accept = num_accept if balance == 1.0 else round(num_reject * balance / (1.0 - balance))
    else:
        keep_accept = num_accept
        keep_reject = num_reject if balance == 0.0 else round(num_accept * (1.0 - balance) / balance)
    return min(keep_accept, num_accept), min(keep_reject, num_reject)


def sft_targets(
    records: Sequence[LabelRecord],
    *,
    alpha: float,
    balance: float | None = 0.5,
    seed: int,
    max_examples: int | None = None,
) -> list[SFTExample]:
    """Build SFT examples for one agent at scenario ``alpha``.

    Target: the agent's own kept correct response when p(x) >= delta = 1 - alpha (p == delta
    answers), else exactly REFUSAL.

    Edge case alpha = 1 (delta = 0): every record answers, but a record with p = 0 has no correct
    response to imitate; such records are dropped (logged), since refusing would contradict delta.
    For alpha < 1 a record with p >= delta always has p > 0 and hence a correct response.

    Balancing: ``balance`` is the target fraction of "answer" examples (default 0.5 = 50/50); the
    over-represented class is down-sampled at random, deterministically from ``seed``; the minority
    class is kept whole. If the ratio cannot be met because one class is empty (and 0 < balance <
    1) a ValueError is raised rather than silently training on a single class; pass
    ``balance=None`` to keep every example unbalanced. ``max_examples`` then caps the total,
    down-sampling both classes proportionally (keeping the ratio).

    The result depends only on the *set* of records (they are sorted by (task, query_id) before
    sampling), ``alpha``, ``balance``, ``max_examples`` and ``seed``; it is returned shuffled.
    All records must come from one agent and (task, query_id) must be unique.
    """
    _check_alpha(alpha, "alpha")
    if balance is not None and (isinstance(balance, bool) or not 0.0 <= balance <= 1.0):
        raise ValueError(f"balance must be None or in [0, 1], got {balance!r}")
    if max_examples is not None and max_examples < 0:
        raise ValueError(f"max_examples must be >= 0 or None, got {max_examples!r}")
    agents = sorted({r.agent for r in records})
    if len(agents) > 1:
        raise ValueError(f"sft_targets expects the records of one agent, got agents {agents}")
    ordered = sorted(records, key=lambda r: (r.task, r.query_id))
    for prev, cur in zip(ordered, ordered[1:]):
        if (prev.task, prev.query_id) == (cur.task, cur.query_id):
            raise ValueError(f"duplicate record for task={cur.task!r} query_id={cur.query_id!r}")

    accept: list[SFTExample] = []
    reject: list[SFTExample] = []
    num_unanswerable = 0
    for r in ordered:
        if should_answer(r.p_correct, alpha):
            if r.correct_response is None:  # only possible with p = 0 at alpha = 1
                num_unanswerable += 1
                continue
            accept.append(_example(r, alpha, r.correct_response, answers=True))
        else:
            reject.append(_example(r, alpha, REFUSAL, answers=False))
    if num_unanswerable:
        logger.warning("sft_targets(alpha=%s): dropped %d records with p=0 (no correct response, delta=0)",
                       alpha, num_unanswerable)

    rng = np.random.default_rng(seed)
    if balance is not None:
        if 0.0 < balance < 1.0 and (not accept or not reject):
            raise ValueError(
                f"sft_targets(alpha={alpha}): cannot balance to {balance:.0%} answers with "
                f"{len(accept)} answer and {len(reject)} refusal examples; pass balance=None to keep all"
            )
        keep_accept, keep_reject = balanced_counts(len(accept), len(reject), balance)
    else:
        keep_accept, keep_reject = len(accept), len(reject)
    total = keep_accept + keep_reject
    if max_examples is not None and total > max_examples:
        keep_accept = round(keep_accept * max_examples / total)
        keep_reject = max_examples - keep_accept

    chosen = _sample(accept, keep_accept, rng) + _sample(reject, keep_reject, rng)
    return [chosen[i] for i in rng.permutation(len(chosen))]


# How SFT balances answers against refusals when one model learns several scenarios.
PER_ALPHA = "per_alpha"  # each scenario on its own
POOLED = "pooled"  # once, over every scenario's targets together
BALANCE_SCOPES = (PER_ALPHA, POOLED)


def scenario_targets(
    records: Sequence[LabelRecord],
    *,
    alphas: Sequence[float],
    balance: float | None = 0.5,
    scope: str = PER_ALPHA,
    seed: int,
    max_examples: int | None = None,
) -> list[SFTExample]:
    """SFT examples for one agent over every scenario of ``alphas`` (``sft_targets`` per α).

    ``scope=POOLED`` balances the union of the scenarios' targets to ``balance`` once and caps it
    at ``max_examples``: each scenario keeps its own answer rate relative to the others (Cost First,
    with the lowest δ, answers the most), which is the difference the agent must learn to read
    from the scenario in its prompt. ``scope=PER_ALPHA`` balances each scenario to ``balance``
    and caps each at ``max_examples // len(alphas)``: every scenario then answers the same share
    of its examples, and only the queries whose label flips with α carry the scenario.
    A scenario (PER_ALPHA) or the union (POOLED) with one class empty is kept unbalanced, with a
    warning: its labels are still right (e.g. a weak agent never reaches p >= 0.8).
    """
    if scope not in BALANCE_SCOPES:
        raise ValueError(f"sft.balance_scope={scope!r}: must be one of {BALANCE_SCOPES}")
    if not alphas:
        raise ValueError("alphas must name at least one scenario")
    if scope == PER_ALPHA:
        cap = None if max_examples is None else max(1, max_examples // len(alphas))
        return [t for i, alpha in enumerate(alphas)
                for t in sft_targets(records, alpha=alpha, balance=_balance_or_none(records, (alpha,), balance),
                                     seed=seed + i, max_examples=cap)]
    pooled = [t for i, alpha in enumerate(alphas) for t in sft_targets(records, alpha=alpha, balance=None, seed=seed + i)]
    accept = [t for t in pooled if t.answers]
    reject = [t for t in pooled if not t.answers]
    if _balance_or_none(records, alphas, balance) is None:
        keep_accept, keep_reject = len(accept), len(reject)
    else:
        keep_accept, keep_reject = balanced_counts(len(accept), len(reject), balance)
    total = keep_accept + keep_reject
    if max_examples is not None and total > max_examples:
        keep_accept = round(keep_accept * max_examples / total)
        keep_reject = max_examples - keep_accept
    rng = np.random.default_rng([seed, 11])
    chosen = _sample(accept, keep_accept, rng) + _sample(reject, keep_reject, rng)
    return [chosen[i] for i in rng.permutation(len(chosen))]


def balance_applies(records: Sequence[LabelRecord], alphas: Sequence[float], balance: float | None) -> bool:
    """Whether ``balance`` can hold over the targets of ``alphas``: both classes present (0 or 1
    is no balance to strike, nor is None)."""
    if balance is None or not 0.0 < balance < 1.0:
        return False
    answers = sum(should_answer(r.p_correct, alpha) for alpha in alphas for r in records)
    return answers not in (0, len(records) * len(alphas))


def _balance_or_none(records: Sequence[LabelRecord], alphas: Sequence[float], balance: float | None) -> float | None:
    """``balance``, or None (with a warning) when the scenarios' targets hold only one class."""
    if balance is None or not 0.0 < balance < 1.0 or balance_applies(records, alphas, balance):
        return balance
    logger.warning("%s, alpha=%s: targets of one class only (%d records); not balancing",
                   records[0].agent if records else "no agent", ",".join(f"{a:g}" for a in alphas), len(records))
    return None


def _example(r: LabelRecord, alpha: float, response: str, *, answers: bool) -> SFTExample:
    return SFTExample(agent=r.agent, task=r.task, query_id=r.query_id, alpha=float(alpha),
                      prompt_question=r.prompt_question, response=response, answers=answers,
                      p_correct=float(r.p_correct))


def _sample(items: list, k: int, rng: np.random.Generator) -> list:
    """k items without replacement, in their original order."""
    picked = np.sort(rng.choice(len(items), size=k, replace=False)) if k < len(items) else range(len(items))
    return [items[i] for i in picked]


# --------------------------------------------------------------------------------------------
# Tokenized SFT examples and padded batches
# --------------------------------------------------------------------------------------------


class TokenizedSFTExample(NamedTuple):
    """Next-token layout of prompt + response + end-of-turn, each of length L = len(prompt) + len(response).

    input_ids[t] predicts targets[t] = sequence[t + 1]; loss_mask[t] = 1 iff targets[t] is a
    response token or the end-of-turn token. A plain tuple, so ``ids, tgt, mask = ...`` works.
    """

    input_ids: np.ndarray  # [L] int32
    targets: np.ndarray  # [L] int32
    loss_mask: np.ndarray  # [L] float32


def tokenize_sft_example(
    prompt_ids: Sequence[int], response_ids: Sequence[int], eos_id: int, max_len: int | None = None
) -> TokenizedSFTExample:
    """Lay out one example for next-token training (no padding; see :func:`bucket_pad_batch`).

    sequence = prompt_ids + response_ids + [eos_id]; input_ids = sequence[:-1],
    targets = sequence[1:], loss_mask = 1 exactly on the positions whose target is a response token
    or eos_id (positions len(prompt)-1 .. L-1), 0 on positions predicting prompt tokens.

    Raises ValueError for an empty prompt or response, or when L exceeds ``max_len`` (None: no
    limit); nothing is truncated here, because cutting the response would drop the end-of-turn
    token and teach the model never to stop.
    """
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
    response = np.asarray(response_ids, dtype=np.int64).reshape(-1)
    if prompt.size == 0:
        raise ValueError("tokenize_sft_example: prompt_ids is empty")
    if response.size == 0:
        raise ValueError("tokenize_sft_example: response_ids is empty")
    sequence = np.concatenate([prompt, response, np.asarray([eos_id], dtype=np.int64)])
    if (sequence < 0).any() or (sequence > np.iinfo(np.int32).max).any():
        raise ValueError(f"tokenize_sft_example: token ids must be in [0, 2**31), got {sequence.min()}..{sequence.max()}")
    length = sequence.size - 1
    if max_len is not None and length > max_len:
        raise ValueError(
            f"tokenize_sft_example: prompt ({prompt.size}) + response ({response.size}) = {length} tokens "
            f"exceeds max_len={max_len}"
        )
    loss_mask = np.zeros(length, dtype=np.float32)
    loss_mask[prompt.size - 1:] = 1.0
    return TokenizedSFTExample(input_ids=sequence[:-1].astype(np.int32), targets=sequence[1:].astype(np.int32),
                               loss_mask=loss_mask)


@dataclasses.dataclass(frozen=True)
class PaddedSFTBatch:
    input_ids_bt: np.ndarray  # [B, T] int32, right-padded with pad_id
    targets_bt: np.ndarray  # [B, T] int32, right-padded with pad_id
    loss_mask_bt: np.ndarray  # [B, T] float32, 0 on padding
    num_dropped: int  # examples longer than the largest bucket, left out
    kept_indices: tuple[int, ...]  # indices (into the input list) of the rows, in row order


def _check_buckets(length_buckets: Sequence[int]) -> list[int]:
    buckets = sorted(length_buckets)
    if not buckets or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in buckets):
        raise ValueError(f"length_buckets must be a non-empty list of positive ints, got {list(length_buckets)!r}")
    return [int(b) for b in buckets]


def bucket_length(length: int, length_buckets: Sequence[int]) -> int | None:
    """Smallest bucket >= length, or None when length exceeds every bucket."""
    for bucket in _check_buckets(length_buckets):
        if bucket >= length:
            return bucket
    return None


def bucket_pad_batch(
    examples: Sequence[TokenizedSFTExample],
    length_buckets: Sequence[int],
    pad_id: int,
    *,
    batch_size: int | None = None,
) -> PaddedSFTBatch:
    """Right-pad examples to the smallest bucket >= the longest kept example.

    Truncation policy: an example longer than the largest bucket is dropped whole (counted in
    ``num_dropped``), never truncated. Padding positions hold ``pad_id`` in inputs and targets and
    0 in the loss mask; with causal attention, right padding cannot influence the real tokens.
    If every example is dropped the batch is padded-only (all-zero mask) at the smallest bucket.
    ``batch_size`` (optional) pads the batch dimension with fully masked rows so that the last
    partial batch keeps the same static shape; more kept examples than ``batch_size`` is an error.
    """
    buckets = _check_buckets(length_buckets)
    lengths = [int(np.shape(ex[0])[0]) for ex in examples]
    kept = [i for i, length in enumerate(lengths) if length <= buckets[-1]]
    num_dropped = len(examples) - len(kept)
    if num_dropped:
        logger.info("bucket_pad_batch: dropped %d of %d examples longer than %d tokens",
                    num_dropped, len(examples), buckets[-1])
    longest = max((lengths[i] for i in kept), default=1)
    width = bucket_length(longest, buckets)
    rows = len(kept) if batch_size is None else batch_size
    if rows < len(kept):
        raise ValueError(f"bucket_pad_batch: {len(kept)} examples do not fit batch_size={batch_size}")

    input_ids_bt = np.full((rows, width), pad_id, dtype=np.int32)
    targets_bt = np.full((rows, width), pad_id, dtype=np.int32)
    loss_mask_bt = np.zeros((rows, width), dtype=np.float32)
    for row, i in enumerate(kept):
        input_ids, targets, loss_mask = examples[i]
        n = lengths[i]
        input_ids_bt[row, :n] = input_ids
        targets_bt[row, :n] = targets
        loss_mask_bt[row, :n] = loss_mask
    return PaddedSFTBatch(input_ids_bt=input_ids_bt, targets_bt=targets_bt, loss_mask_bt=loss_mask_bt,
                          num_dropped=num_dropped, kept_indices=tuple(kept))


# --------------------------------------------------------------------------------------------
# RL
# --------------------------------------------------------------------------------------------


def alpha_schedule(alphas: Sequence[float], n: int, seed: int) -> np.ndarray:
    """Scenario alpha for each of ``n`` RL prompts, drawn from the configured set ``alphas``.

    Stratified rather than i.i.d.: the set is tiled to length n (each alpha appears floor(n/k) or
    ceil(n/k) times, which ones get the extra draw chosen at random) and then shuffled, so every
    scenario is trained on equally often even in small runs. Deterministic in ``seed``.
    Returns float64 values identical to the configured ones (so ``alpha == 0.2`` holds).
    """
    values = [float(a) for a in alphas]
    if not values:
        raise ValueError("alpha_schedule: alphas is empty")
    for a in values:
        _check_alpha(a, "alpha_schedule: alphas element")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"alpha_schedule: n must be an int >= 0, got {n!r}")
    rng = np.random.default_rng(seed)
    k = len(values)
    full, extra = divmod(int(n), k)
    extra_indices = rng.choice(k, size=extra, replace=False)
    pool = np.concatenate([np.tile(np.asarray(values), full), np.asarray(values)[extra_indices]])
    return rng.permutation(pool).astype(np.float64)
