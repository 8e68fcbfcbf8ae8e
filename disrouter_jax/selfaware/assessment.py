"""Does a trained agent refuse exactly what it would get wrong? Self-assessment on held-out queries.

For every held-out query the agent answers with greedy decoding:
  * the plain prompt (no scenario, no refusal option): its forced answer, the ground truth of
    "would it be right" (as ``evaluate`` scores it);
  * the scenario prompt of each α: does it refuse?
Refusal is scored as a detector of "would be wrong" (positive class = refuse, label = the plain
answer is wrong), the convention of ``cascade.metrics.self_assessment``: accuracy, precision,
recall, F1, plus the refusal rate, which must fall as α rises (Cost First refuses least), and
the accuracy of the answers it did give. Optionally the same scores against a reference ground
truth (the pre-trained agent's plain answers; see :func:`assess_agent`).

``assessment_scores`` is the pure arithmetic; ``assess_agent`` runs an agent through the
generation engine; ``ensure_assessment`` caches the result as JSON (reused when present).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from disrouter_jax import storage
from disrouter_jax.agents import Agent
from disrouter_jax.generation import generate
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.registry import get_task

logger = logging.getLogger(__name__)
ASSESSMENT_FILE = "assessment.json"


def assessment_scores(refused: Sequence[bool], plain_correct: Sequence[bool],
                      answer_correct: Sequence[bool] | None = None) -> dict[str, Any]:
    """Refusal as a detector of "the plain answer would be wrong", over aligned per-query flags.

    Args:
      refused: the agent refused the query under the scenario prompt.
      plain_correct: its answer to the plain prompt was correct.
      answer_correct: optional; its scenario-prompt reply was a correct answer (False where it
        refused) — gives the accuracy of what it did answer.

    Returns a dict: n, refusal_rate, plain_accuracy, tp/fp/fn/tn (positive = refuse, label = plain
    answer wrong), accuracy, precision, recall, f1 (``None`` where a denominator is zero), and,
    with ``answer_correct``, answered_accuracy (``None`` when nothing was answered).
    """
    refused_q = np.asarray(refused, dtype=bool).reshape(-1)
    wrong_q = ~np.asarray(plain_correct, dtype=bool).reshape(-1)
    if refused_q.shape != wrong_q.shape:
        raise ValueError(f"assessment_scores: {refused_q.size} refusal flags but {wrong_q.size} plain-answer flags")
    n = int(refused_q.size)
    tp = int(np.sum(refused_q & wrong_q))
    fp = int(np.sum(refused_q & ~wrong_q))
    fn = int(np.sum(~refused_q & wrong_q))
    tn = int(np.sum(~refused_q & ~wrong_q))
    out: dict[str, Any] = {
        "n": n,
        "refusal_rate": float(refused_q.mean()) if n else None,
        "plain_accuracy": float((~wrong_q).mean()) if n else None,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "accuracy": (tp + tn) / n if n else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None,
    }
    if answer_correct is not None:
        correct_q = np.asarray(answer_correct, dtype=bool).reshape(-1)
        if correct_q.shape != refused_q.shape:
            raise ValueError(f"assessment_scores: {correct_q.size} answer flags for {n} queries")
        if np.any(correct_q & refused_q):
            raise ValueError("assessment_scores: a refused query cannot be a correct answer")
        answered = ~refused_q
        out["answered_accuracy"] = float(correct_q[answered].mean()) if answered.any() else None
    return out


def _greedy_verdicts(agent: Agent, examples: Sequence[Example], alpha: float | None, *,
                     max_new_tokens: int, batch_size: int):
    prompts = [agent.prompt_ids(example, alpha) for example in examples]
    generations = generate(agent.model, prompts, max_new_tokens=max_new_tokens, stop_token_ids=agent.stop_token_ids,
                           mesh=agent.mesh, max_batch_size=batch_size, progress=False)
    return [get_task(ex.task).check(ex, agent.decode(g[0].tokens)) for ex, g in zip(examples, generations)]


def assess_agent(agent: Agent, examples: Sequence[Example], alphas: Sequence[float], *,
                 reference_correct: Sequence[bool] | None = None, max_new_tokens: int = 16,
                 batch_size: int = 64) -> dict[str, Any]:
    """Greedy plain and per-α scenario replies of ``agent`` to ``examples``, scored per α, overall
    and per task.

    Returns ``{"agent", "num_queries", "plain_accuracy", "plain_refusal_rate", "alphas": {"0.2":
    scores}, "by_task": {task: {"0.2": scores}}, "queries": {"keys", "plain_correct", "refused":
    {"0.2": [...]}, "answer_correct": {"0.2": [...]}}}`` (per-query flags in ``keys`` order).
    ``alphas=()`` gives the plain answers only (e.g. for the pre-trained agent).

    ``reference_correct`` (aligned with ``examples``): a second ground truth, typically the
    pre-trained agent's plain-prompt correctness, scored into ``"alphas_vs_reference"``. A trained
    agent may also refuse the *plain* prompt; its own plain reply then cannot say whether it would
    have been right, and "refused twice" would count as a correct self-assessment. When only the
    refusal's rows were trained, the pre-trained agent's answer is exactly its forced answer.
    """
    if not examples:
        raise ValueError(f"assess_agent({agent.name}): no queries to assess")
    if reference_correct is not None and len(reference_correct) != len(examples):
        raise ValueError(f"assess_agent({agent.name}): {len(reference_correct)} reference flags for "
                         f"{len(examples)} queries")
    plain = _greedy_verdicts(agent, examples, None, max_new_tokens=max_new_tokens, batch_size=batch_size)
    plain_correct = np.asarray([v.correct for v in plain])
    tasks = np.asarray([ex.task for ex in examples])
    result: dict[str, Any] = {
        "agent": agent.name, "num_queries": len(examples), "plain_accuracy": float(plain_correct.mean()),
        "plain_refusal_rate": float(np.mean([v.refused for v in plain])),
        "alphas": {}, "by_task": {},
        "queries": {"keys": [f"{ex.task}/{ex.id}" for ex in examples], "plain_correct": plain_correct.tolist(),
                    "refused": {}, "answer_correct": {}},
    }
    if reference_correct is not None:
        result["alphas_vs_reference"] = {}
    for alpha in alphas:
        verdicts = _greedy_verdicts(agent, examples, float(alpha), max_new_tokens=max_new_tokens,
                                    batch_size=batch_size)
        refused = np.asarray([v.refused for v in verdicts])
        correct = np.asarray([v.correct and not v.refused for v in verdicts])
        key = f"{float(alpha):g}"
        result["queries"]["refused"][key] = refused.tolist()
        result["queries"]["answer_correct"][key] = correct.tolist()
        result["alphas"][key] = assessment_scores(refused, plain_correct, correct)
        if reference_correct is not None:
            result["alphas_vs_reference"][key] = assessment_scores(refused, reference_correct, correct)
        for task in sorted(set(tasks.tolist())):
            rows = tasks == task
            result["by_task"].setdefault(task, {})[key] = assessment_scores(
                refused[rows], plain_correct[rows], correct[rows])
    return result


def ensure_assessment(agent: Agent | Callable[[], Agent], examples: Sequence[Example], alphas: Sequence[float],
                      path: str | os.PathLike, **kwargs) -> dict[str, Any]:
    """:func:`assess_agent`, cached in ``path`` (JSON). A cached file is reused only when it covers
    the same queries and α; otherwise it is recomputed and replaced (it is derived, not trained).
    ``agent`` may be a zero-argument loader, called only when the cache cannot be used."""
    path = storage.path(path)
    fingerprint = {"query_keys": sorted(f"{ex.task}/{ex.id}" for ex in examples),
                   "alphas": [float(a) for a in alphas]}
    if kwargs.get("reference_correct") is not None:
        fingerprint["reference_correct"] = [bool(x) for x in kwargs["reference_correct"]]
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("fingerprint") == fingerprint:
            return cached
        logger.info("%s was computed on other queries or alphas; recomputing", path)
    if not isinstance(agent, Agent):
        agent = agent()
    result = assess_agent(agent, examples, alphas, **kwargs)
    result["fingerprint"] = fingerprint
    if storage.is_writer():
        storage.write_text(path, json.dumps(result, indent=2) + "\n")
    return result


def format_table(rows: Sequence[tuple[str, str, dict[str, Any]]], alphas: Sequence[float]) -> str:
    """One line per (agent, stage, assessment): plain-prompt accuracy, refusal rate per α,
    accuracy / F1 per α against the agent's own plain answer and, where present, against the
    reference (pre-trained agent's) answer, and the accuracy of the answers it gave per α."""
    keys = [f"{float(a):g}" for a in alphas]

    def fmt(x):
        return "-" if x is None else f"{x:.2f}"

    head = [f"{'agent':<8}", f"{'stage':<5}", f"{'plain':>5}"]
    head += [f"{'ref@' + k:>7}" for k in keys] + [f"{'acc/F1@' + k:>11}" for k in keys]
    head += [f"{'vs-pre@' + k:>11}" for k in keys] + [f"{'ans.acc@' + k:>10}" for k in keys]
    lines = [" ".join(head)]
    for name, stage, result in rows:
        own = [result.get("alphas", {}).get(k, {}) for k in keys]
        ref = [result.get("alphas_vs_reference", {}).get(k, {}) for k in keys]
        cells = [f"{name:<8}", f"{stage:<5}", f"{fmt(result.get('plain_accuracy')):>5}"]
        cells += [f"{fmt(p.get('refusal_rate')):>7}" for p in own]
        cells += [f"{fmt(p.get('accuracy')) + '/' + fmt(p.get('f1')):>11}" for p in own]
        cells += [f"{fmt(p.get('accuracy')) + '/' + fmt(p.get('f1')):>11}" for p in ref]
        cells += [f"{fmt(p.get('answered_accuracy')):>10}" for p in own]
        lines.append(" ".join(cells))
    return "\n".join(lines)
