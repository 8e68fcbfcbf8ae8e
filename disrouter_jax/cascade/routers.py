"""Central-router baselines trained on the same correctness labels as the outcome table.

* :class:`ClassifierRouter` — an external assessor (like the paper's BERT/LLM-based routers):
  from a per-query feature vector (e.g. mean-pooled hidden states of a frozen small model) it
  predicts, for every agent, P(agent answers correctly); a query goes to the cheapest agent with
  P ≥ τ, where τ is searched per α on the training rows to maximise utility. When no agent
  reaches τ it goes to the agent with the best expected utility P − α·cost.
* :class:`FrugalGPTRouter` — a FrugalGPT-style cascade: agents are tried in pool order, a learned
  scorer rates (query, answer) from per-answer features (e.g. mean token log-prob, length) plus
  the agent's identity, and the answer is accepted when its score reaches that agent's
  threshold; thresholds are searched per α by coordinate ascent on the training rows. A refusal
  is never accepted; the last agent's reply is always final. Cost is cumulative by default —
  every tried agent generated a full answer (``cost_mode`` can say otherwise).

Labels: an agent's reply is correct when it answered correctly (a refusal is wrong). One scorer
is fitted per recorded α because the agents' behaviour depends on the scenario in the prompt.
Scorers are logistic regressions (``hidden_size=0``) or one-hidden-layer MLPs, trained full-batch
with Adam in a single jitted ``lax.scan``; everything is deterministic from ``ScorerConfig.seed``.
Feature arrays are aligned with the rows passed: ``features_rd[r]`` belongs to ``rows[r]``.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from disrouter_jax.cascade.log import ANSWER, OutcomeRow, RoutingRecord
from disrouter_jax.cascade.metrics import COST_CUMULATIVE, COST_FINAL, pool_costs, routing_cost

CLASSIFIER_ROUTER = "classifier_router"
FRUGALGPT = "frugalgpt"


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    hidden_size: int = 0  # 0: logistic regression; >0: one tanh hidden layer
    steps: int = 400
    learning_rate: float = 0.05
    weight_decay: float = 1e-4  # L2 on weights, not biases
    seed: int = 0

    def __post_init__(self):
        for name in ("hidden_size", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "hidden_size" else 1):
                raise ValueError(f"ScorerConfig.{name} must be an int >= {0 if name == 'hidden_size' else 1}, got {value!r}")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise ValueError(f"ScorerConfig: learning_rate must be > 0 and weight_decay >= 0, got "
                             f"{self.learning_rate!r}, {self.weight_decay!r}")


# ----------------------------------------------------------------------------- scorer


def _init_params(key, num_features: int, num_outputs: int, hidden_size: int) -> dict:
    if hidden_size == 0:
        return {"w_fk": jnp.zeros((num_features, num_outputs)), "b_k": jnp.zeros((num_outputs,))}
    key_in, key_out = jax.random.split(key)
    return {
        "w_fh": jax.random.normal(key_in, (num_features, hidden_size)) / np.sqrt(max(num_features, 1)),
        "b_h": jnp.zeros((hidden_size,)),
        "w_hk": jax.random.normal(key_out, (hidden_size, num_outputs)) / np.sqrt(hidden_size),
        "b_k": jnp.zeros((num_outputs,)),
    }


def _logits(params: dict, x_nf):
    if "w_fk" in params:
        return x_nf @ params["w_fk"] + params["b_k"]
    return jnp.tanh(x_nf @ params["w_fh"] + params["b_h"]) @ params["w_hk"] + params["b_k"]


@partial(jax.jit, static_argnames=("steps", "learning_rate", "weight_decay"))
def _train(params, x_nf, y_nk, mask_nk, *, steps, learning_rate, weight_decay):
    optimizer = optax.adam(learning_rate)

    def loss_fn(p):
        bce_nk = optax.sigmoid_binary_cross_entropy(_logits(p, x_nf), y_nk)
        data_loss = jnp.sum(bce_nk * mask_nk) / jnp.maximum(jnp.sum(mask_nk), 1.0)
        l2 = sum(jnp.sum(w**2) for name, w in p.items() if name.startswith("w_"))
        return data_loss + weight_decay * l2

    def step(carry, _):
        p, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    (params, _), loss_s = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    return params, loss_s


@dataclasses.dataclass(frozen=True)
class FittedScorer:
    """Standardisation + parameters of one fitted scorer; ``predict`` gives probabilities."""

    mean_f: np.ndarray
    std_f: np.ndarray
    params: dict
    final_loss: float

    def predict(self, x_nf: np.ndarray) -> np.ndarray:
        x_nf = (np.asarray(x_nf, np.float32) - self.mean_f) / self.std_f
        return np.asarray(jax.nn.sigmoid(_logits(self.params, jnp.asarray(x_nf))), dtype=np.float64)


def fit_scorer(x_nf: np.ndarray, y_nk: np.ndarray, mask_nk: Optional[np.ndarray], config: ScorerConfig) -> FittedScorer:
    """Multi-output binary classifier: masked mean BCE, features standardised on this data."""
    x_nf = np.asarray(x_nf, np.float32)
    y_nk = np.asarray(y_nk, np.float32)
    if x_nf.ndim != 2 or y_nk.ndim != 2 or x_nf.shape[0] != y_nk.shape[0]:
        raise ValueError(f"fit_scorer: need x [N, F] and y [N, K] with equal N, got {x_nf.shape} and {y_nk.shape}")
    if not np.all(np.isfinite(x_nf)):
        raise ValueError("fit_scorer: features contain NaN or inf")
    mask_nk = np.ones_like(y_nk) if mask_nk is None else np.asarray(mask_nk, np.float32)
    mean_f = x_nf.mean(axis=0)
    std_f = np.where(x_nf.std(axis=0) > 1e-6, x_nf.std(axis=0), 1.0).astype(np.float32)
    params = _init_params(jax.random.key(config.seed), x_nf.shape[1], y_nk.shape[1], config.hidden_size)
    # Pad the rows to a power of two (masked out) so that fits on similar sizes share one program.
    padded = max(64, 1 << (x_nf.shape[0] - 1).bit_length())
    pad = ((0, padded - x_nf.shape[0]), (0, 0))
    x_nf = np.pad((x_nf - mean_f) / std_f, pad)
    y_nk, mask_nk = np.pad(y_nk, pad), np.pad(mask_nk, pad)
    params, loss_s = _train(params, jnp.asarray(x_nf), jnp.asarray(y_nk), jnp.asarray(mask_nk),
                            steps=config.steps, learning_rate=float(config.learning_rate),
                            weight_decay=float(config.weight_decay))
    return FittedScorer(mean_f, std_f, jax.tree.map(np.asarray, params), float(loss_s[-1]))


# ----------------------------------------------------------------------------- shared helpers


def _correct_ra(rows: Sequence[OutcomeRow], pool: Sequence[str]) -> np.ndarray:
    return np.array([[row.outcome(a).decision == ANSWER and row.outcome(a).correct for a in pool] for row in rows],
                    dtype=bool)


def _answered_ra(rows: Sequence[OutcomeRow], pool: Sequence[str]) -> np.ndarray:
    return np.array([[row.outcome(a).decision == ANSWER for a in pool] for row in rows], dtype=bool)


def _alpha_groups(rows: Sequence[OutcomeRow]) -> dict[float, np.ndarray]:
    groups: dict[float, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(round(row.alpha, 6), []).append(index)
    return {alpha: np.array(indices) for alpha, indices in sorted(groups.items())}


def _check_aligned(rows, features, name: str, ndim: int) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != ndim or features.shape[0] != len(rows):
        raise ValueError(f"{name} must have {ndim} dims with one entry per row ({len(rows)}), got shape {features.shape}")
    return features


def _plateau_middle(values: np.ndarray) -> int:
    """Index in the middle of the first run of maximal values (robust choice among equals)."""
    best = values.max()
    start = int(np.argmax(values >= best - 1e-12))
    end = start
    while end + 1 < len(values) and values[end + 1] >= best - 1e-12:
        end += 1
    return (start + end) // 2


def _records(rows, pool, costs, visits_r, method, cost_mode) -> list[RoutingRecord]:
    records = []
    for row, visited in zip(rows, visits_r):
        final = row.outcome(visited[-1])
        records.append(RoutingRecord(
            query_id=row.query_id, dataset=row.dataset, alpha=row.alpha,
            visited=tuple(row.outcome(a).visit() for a in visited), final_agent=final.agent,
            response=final.response, correct=final.decision == ANSWER and final.correct,
            cost=routing_cost(visited, costs, cost_mode), domain=row.domain, method=method,
            forced_refusal=final.decision != ANSWER))
    return records


# ----------------------------------------------------------------------------- classifier router


def assessor_choice(p_ra: np.ndarray, costs_a: np.ndarray, alpha: float, threshold: float) -> np.ndarray:
    """Cheapest agent with P(correct) ≥ threshold, else argmax P − α·cost (ties: cheaper)."""
    order_a = np.argsort(costs_a, kind="stable")
    p_sorted = p_ra[:, order_a]
    passes = p_sorted >= threshold
    first = order_a[np.argmax(passes, axis=1)]
    fallback = order_a[np.argmax(p_sorted - alpha * costs_a[order_a], axis=1)]
    return np.where(passes.any(axis=1), first, fallback)


class ClassifierRouter:
    """External assessor router (see module doc). ``fit`` → ``route``."""

    def __init__(self, pool: Sequence[str], costs=None, config: ScorerConfig = ScorerConfig(),
                 thresholds: Sequence[float] = tuple(np.round(np.linspace(0.0, 1.0, 101), 4))):
        self.pool = list(pool)
        self.costs = pool_costs(self.pool, costs)
        self.costs_a = np.array([self.costs[a] for a in self.pool])
        self.config = config
        self.threshold_grid = np.asarray(thresholds, dtype=np.float64)
        self.scorers: dict[float, FittedScorer] = {}
        self.thresholds: dict[float, float] = {}

    def fit(self, rows: Sequence[OutcomeRow], features_rd: np.ndarray) -> "ClassifierRouter":
        features_rd = _check_aligned(rows, features_rd, "ClassifierRouter.fit features_rd", 2)
        for alpha, index in _alpha_groups(rows).items():
            group = [rows[i] for i in index]
            correct_ra = _correct_ra(group, self.pool)
            scorer = fit_scorer(features_rd[index], correct_ra, None, self.config)
            p_ra = scorer.predict(features_rd[index])
            utilities = []
            for threshold in self.threshold_grid:
                choice_r = assessor_choice(p_ra, self.costs_a, alpha, threshold)
                accuracy = correct_ra[np.arange(len(group)), choice_r].mean()
                utilities.append(accuracy - alpha * self.costs_a[choice_r].mean())
            self.scorers[alpha] = scorer
            self.thresholds[alpha] = float(self.threshold_grid[_plateau_middle(np.array(utilities))])
        return self

    def _fitted(self, alpha: float) -> FittedScorer:
        if alpha not in self.scorers:
            raise ValueError(f"ClassifierRouter: not fitted for alpha={alpha}; fitted alphas: {sorted(self.scorers)}")
        return self.scorers[alpha]

    def predict(self, rows: Sequence[OutcomeRow], features_rd: np.ndarray) -> np.ndarray:
        """P(correct) per row and pool agent, [R, A]."""
        features_rd = _check_aligned(rows, features_rd, "ClassifierRouter features_rd", 2)
        p_ra = np.zeros((len(rows), len(self.pool)))
        for alpha, index in _alpha_groups(rows).items():
            p_ra[index] = self._fitted(alpha).predict(features_rd[index])
        return p_ra

    def capable(self, rows: Sequence[OutcomeRow], features_rd: np.ndarray) -> np.ndarray:
        """[R, A]: the router judges the agent able to answer, P(correct) ≥ its threshold at the row's α."""
        p_ra = self.predict(rows, features_rd)
        threshold_r = np.array([self.thresholds[round(row.alpha, 6)] for row in rows])
        return p_ra >= threshold_r[:, None]

    def route(self, rows: Sequence[OutcomeRow], features_rd: np.ndarray) -> list[RoutingRecord]:
        p_ra = self.predict(rows, features_rd)
        choice_r = np.zeros(len(rows), dtype=int)
        for alpha, index in _alpha_groups(rows).items():
            choice_r[index] = assessor_choice(p_ra[index], self.costs_a, alpha, self.thresholds[alpha])
        visits_r = [[self.pool[k]] for k in choice_r]
        return _records(rows, self.pool, self.costs, visits_r, CLASSIFIER_ROUTER, COST_FINAL)


# ----------------------------------------------------------------------------- FrugalGPT


def frugal_stop(score_ra: np.ndarray, answered_ra: np.ndarray, thresholds_a: np.ndarray) -> np.ndarray:
    """Index of the first agent (pool order) whose answer is accepted; the last always is."""
    accept_ra = answered_ra & (score_ra >= thresholds_a[None, :])
    accept_ra[:, -1] = True
    return np.argmax(accept_ra, axis=1)


class FrugalGPTRouter:
    """FrugalGPT-style answer-scoring cascade (see module doc). ``fit`` → ``route``."""

    def __init__(self, pool: Sequence[str], costs=None, config: ScorerConfig = ScorerConfig(),
                 cost_mode: str = COST_CUMULATIVE,
                 thresholds: Sequence[float] = tuple(np.round(np.linspace(0.0, 1.0, 21), 4)) + (1.01,),
                 max_sweeps: int = 6):
        self.pool = list(pool)
        self.costs = pool_costs(self.pool, costs)
        self.costs_a = np.array([self.costs[a] for a in self.pool])
        self.config = config
        self.cost_mode = cost_mode
        self.threshold_grid = np.asarray(thresholds, dtype=np.float64)
        self.max_sweeps = max_sweeps
        self.scorers: dict[float, FittedScorer] = {}
        self.thresholds: dict[float, np.ndarray] = {}

    def _inputs(self, features_raf: np.ndarray) -> np.ndarray:
        """[R·A, F + A]: the answer's features plus a one-hot of the agent that gave it."""
        r, a, f = features_raf.shape
        onehot_raa = np.broadcast_to(np.eye(a, dtype=np.float32), (r, a, a))
        return np.concatenate([features_raf, onehot_raa], axis=-1).reshape(r * a, f + a)

    def _cost_r(self, stop_r: np.ndarray) -> np.ndarray:
        return np.cumsum(self.costs_a)[stop_r] if self.cost_mode == COST_CUMULATIVE else self.costs_a[stop_r]

    def fit(self, rows: Sequence[OutcomeRow], features_raf: np.ndarray) -> "FrugalGPTRouter":
        features_raf = _check_aligned(rows, features_raf, "FrugalGPTRouter.fit features_raf", 3)
        if features_raf.shape[1] != len(self.pool):
            raise ValueError(f"FrugalGPTRouter: features_raf has {features_raf.shape[1]} agents, pool has {len(self.pool)}")
        for alpha, index in _alpha_groups(rows).items():
            group = [rows[i] for i in index]
            correct_ra, answered_ra = _correct_ra(group, self.pool), _answered_ra(group, self.pool)
            # Refusals are rejected by rule, so the scorer only learns from real answers.
            scorer = fit_scorer(self._inputs(features_raf[index]), correct_ra.reshape(-1, 1),
                                answered_ra.reshape(-1, 1), self.config)
            self.scorers[alpha] = scorer
            score_ra = self._score(scorer, features_raf[index])
            self.thresholds[alpha] = self._search(score_ra, answered_ra, correct_ra, alpha)
        return self

    def _score(self, scorer: FittedScorer, features_raf: np.ndarray) -> np.ndarray:
        return scorer.predict(self._inputs(features_raf)).reshape(features_raf.shape[:2])

    def _search(self, score_ra, answered_ra, correct_ra, alpha) -> np.ndarray:
        rows = np.arange(score_ra.shape[0])

        def train_utility(thresholds_a):
            stop_r = frugal_stop(score_ra, answered_ra, thresholds_a)
            return correct_ra[rows, stop_r].mean() - alpha * self._cost_r(stop_r).mean()

        thresholds_a = np.full(len(self.pool), 0.5)
        for _ in range(self.max_sweeps):
            changed = False
            for agent in range(len(self.pool) - 1):  # the last agent always answers
                trial = []
                for value in self.threshold_grid:
                    candidate = thresholds_a.copy()
                    candidate[agent] = value
                    trial.append(train_utility(candidate))
                trial = np.array(trial)
                if trial.max() > train_utility(thresholds_a) + 1e-12:
                    thresholds_a[agent] = self.threshold_grid[_plateau_middle(trial)]
                    changed = True
            if not changed:
                break
        return thresholds_a

    def scores(self, rows: Sequence[OutcomeRow], features_raf: np.ndarray) -> np.ndarray:
        """Acceptance score per row and agent, [R, A]; 0 where the agent refused."""
        features_raf = _check_aligned(rows, features_raf, "FrugalGPTRouter features_raf", 3)
        score_ra = np.zeros(features_raf.shape[:2])
        for alpha, index in _alpha_groups(rows).items():
            if alpha not in self.scorers:
                raise ValueError(f"FrugalGPTRouter: not fitted for alpha={alpha}; fitted alphas: {sorted(self.scorers)}")
            score_ra[index] = self._score(self.scorers[alpha], features_raf[index])
        return np.where(_answered_ra(rows, self.pool), score_ra, 0.0)

    def route(self, rows: Sequence[OutcomeRow], features_raf: np.ndarray) -> list[RoutingRecord]:
        score_ra, answered_ra = self.scores(rows, features_raf), _answered_ra(rows, self.pool)
        stop_r = np.zeros(len(rows), dtype=int)
        for alpha, index in _alpha_groups(rows).items():
            stop_r[index] = frugal_stop(score_ra[index], answered_ra[index], self.thresholds[alpha])
        visits_r = [self.pool[: k + 1] for k in stop_r]
        return _records(rows, self.pool, self.costs, visits_r, FRUGALGPT, self.cost_mode)


def answer_features_from_outcomes(rows: Sequence[OutcomeRow], pool: Sequence[str]) -> np.ndarray:
    """[R, A, F] from the per-answer features the engine stored in the outcome table."""
    widths = {len(row.outcome(a).answer_features) for row in rows for a in pool}
    if len(widths) != 1 or 0 in widths:
        raise ValueError(f"answer_features_from_outcomes: every outcome needs the same non-zero number of "
                         f"answer_features, found lengths {sorted(widths)}")
    return np.array([[row.outcome(a).answer_features for a in pool] for row in rows], dtype=np.float32)


def query_features_for(rows: Sequence[OutcomeRow], keys: Sequence[tuple[str, str]], features_qd: np.ndarray) -> np.ndarray:
    """Align per-query features (``keys[q] = (dataset, query_id)``) with ``rows`` → [R, D]."""
    features_qd = np.asarray(features_qd)
    if features_qd.ndim != 2 or features_qd.shape[0] != len(keys):
        raise ValueError(f"query_features_for: features_qd must be [len(keys)={len(keys)}, D], got {features_qd.shape}")
    position = {tuple(k): i for i, k in enumerate(keys)}
    missing = sorted({row.query_key for row in rows if row.query_key not in position})
    if missing:
        raise ValueError(f"query_features_for: no features for {len(missing)} queries, e.g. {missing[:3]}")
    return features_qd[[position[row.query_key] for row in rows]]
