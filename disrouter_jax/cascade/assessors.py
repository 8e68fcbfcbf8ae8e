"""Each agent judging itself beside the central classifier judging it: per-agent assessor F1.

The paper compares self-assessment (F1 0.80) with external assessors (0.56 BERT-based, 0.71
LLM-based). The cascade's own per-agent scores (``metrics.self_assessment``) only see the queries
that reached an agent, and the classifier router picks one agent per query, so neither can be
compared there. Here both judge every agent on *every* held-out query:

* positive class: the agent's answer would be wrong;
* DiSRouter: the agent refused under the scenario prompt; its label is the answer it gave, or for
  a refusal its forced answer (``AgentOutcome.assessed_correct``), as in the cascade's scores;
* classifier router: it judged the agent incapable, P(correct) < the threshold it routes by at
  that α; its label is that agent's reply in the rows it routes on (the plain replies of the pool
  before Self-Awareness Training, the correctness it was trained to predict).

Only the agents that decide are scored: the cascade's last agent always answers.
Layout: ``{method: {alpha_key: {domain: {agent: confusion scores}}}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from disrouter_jax.cascade.log import ANSWER, REFUSE, OutcomeRow
from disrouter_jax.cascade.metrics import alpha_key, confusion_scores


def judged_scores(rows: Sequence[OutcomeRow], agents: Sequence[str], negative_ra: np.ndarray,
                  wrong_ra: np.ndarray) -> dict:
    """Confusion scores per α, domain and agent; ``negative_ra[r, a]``: the assessor says agent a
    cannot answer row r; ``wrong_ra[r, a]``: True / False, or None where the label is unknown."""
    negative_ra, wrong_ra = np.asarray(negative_ra, dtype=bool), np.asarray(wrong_ra, dtype=object)
    expected = (len(rows), len(agents))
    if negative_ra.shape != expected or wrong_ra.shape != expected:
        raise ValueError(f"judged_scores: judgements {negative_ra.shape} and labels {wrong_ra.shape} must be "
                         f"[rows, agents] = {expected}")
    out: dict = {}
    for index, row in enumerate(rows):
        per_agent = out.setdefault(alpha_key(row.alpha), {}).setdefault(row.domain, {})
        for k, agent in enumerate(agents):
            counts = per_agent.setdefault(agent, {"tp": 0, "fp": 0, "fn": 0, "tn": 0})
            if wrong_ra[index, k] is None:
                continue
            said_no, wrong = bool(negative_ra[index, k]), bool(wrong_ra[index, k])
            counts["tp" if said_no and wrong else "fp" if said_no else "fn" if wrong else "tn"] += 1
    return {key: {domain: {agent: confusion_scores(**counts) for agent, counts in per_agent.items()}
                  for domain, per_agent in by_domain.items()}
            for key, by_domain in sorted(out.items())}


def self_assessors(rows: Sequence[OutcomeRow], agents: Sequence[str]) -> dict:
    """The trained agents' own refusals on scenario outcome rows (see module doc)."""
    refused_ra = np.array([[row.outcome(a).decision == REFUSE for a in agents] for row in rows], dtype=bool)
    wrong_ra = np.array([[None if row.outcome(a).assessed_correct is None else not row.outcome(a).assessed_correct
                          for a in agents] for row in rows], dtype=object).reshape(len(rows), len(agents))
    return judged_scores(rows, agents, refused_ra, wrong_ra)


def external_assessors(rows: Sequence[OutcomeRow], agents: Sequence[str], pool: Sequence[str],
                       capable_ra: np.ndarray) -> dict:
    """A central router's per-agent judgements ``capable_ra`` [rows, pool] on the rows it routes."""
    columns = [list(pool).index(a) for a in agents]
    wrong_ra = np.array([[not (row.outcome(a).decision == ANSWER and row.outcome(a).correct) for a in agents]
                         for row in rows], dtype=object).reshape(len(rows), len(agents))
    return judged_scores(rows, agents, ~np.asarray(capable_ra, dtype=bool)[:, columns], wrong_ra)


def format_assessor_table(assessors: Mapping, domain: str) -> str:
    """F1 per agent (rows) and method × α (columns) for one domain; '' when nothing is scored."""
    methods = list(assessors)
    keys = sorted({k for m in methods for k in assessors[m]}, key=float)
    agents: list[str] = []
    for method in methods:
        for key in keys:
            agents += [a for a in assessors[method].get(key, {}).get(domain, {}) if a not in agents]
    if not agents:
        return ""
    columns = [(m, k) for m in methods for k in keys]
    width = max(len(a) for a in agents) + 2
    cell = max(len(f"{m}@{k}") for m, k in columns) + 2
    lines = [f"assessor F1 per agent (positive: the agent's answer would be wrong) [{domain}]",
             f"{'agent':<{width}}" + "".join(f"{m + '@' + k:>{cell}}" for m, k in columns)]
    for agent in agents:
        cells = []
        for method, key in columns:
            f1 = assessors[method].get(key, {}).get(domain, {}).get(agent, {}).get("f1")
            cells.append(f"{'-' if f1 is None else f'{f1:.3f}':>{cell}}")
        lines.append(f"{agent:<{width}}" + "".join(cells))
    return "\n".join(lines)
