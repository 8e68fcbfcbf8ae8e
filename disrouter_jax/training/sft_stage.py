"""Stage 2: SFT on self-labelled targets (the agent's own correct answer, or the refusal).

For each configured scenario α the labels give targets with threshold δ = 1 − α, balanced
accept/reject per scenario or over all of them together (``sft.balance_scope``); the prompt
carries that scenario's instruction, so one model learns every scenario.
Batches are a pure function of the step index (an epoch-wise permutation from the seed).

Regulariser (``replay_fraction``): that share of the examples replays the agent's own answers on
the *plain* prompt — its correct answer to each training query it answers right at least half the
time (p(x) ≥ 0.5, so the answer is its usual one). Learning a refusal under the scenario prompts
moves every weight; the replayed rows hold the plain-prompt behaviour, and with it what the agent
knows, in place (measured on the toy pool: see README, "Self-Awareness Training").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from disrouter_jax.agents import Agent
from disrouter_jax.generation import chat_prompt_ids
from disrouter_jax.selfaware.data import (
    LabelRecord,
    TokenizedSFTExample,
    PER_ALPHA,
    POOLED,
    balance_applies,
    bucket_pad_batch,
    scenario_targets,
    tokenize_sft_example,
)
from disrouter_jax.tasks.prompts import build_messages
from disrouter_jax.tasks.registry import get_task
from disrouter_jax.training.sft import TokenBatch

logger = logging.getLogger(__name__)
# Replay keeps the answers an agent usually gives: those it samples right at least this often.
REPLAY_MIN_P = 0.5


@dataclasses.dataclass(frozen=True)
class SFTData:
    examples: tuple[TokenizedSFTExample, ...]
    accept_fraction: float  # among the scenario examples (replay rows excluded)
    num_dropped: int
    num_replay: int = 0
    # Per scenario α: {"delta", "answers", "refusals", "balanced"} of the targets kept (summary()).
    per_alpha: tuple[tuple[float, dict], ...] = ()
    balance_scope: str = PER_ALPHA

    def summary(self) -> dict:
        """What SFT trains on, as ``sft/targets.json`` records it."""
        return {"alphas": {f"{a:g}": counts for a, counts in self.per_alpha}, "balance_scope": self.balance_scope,
                "replayed": self.num_replay,
                "dropped_too_long": self.num_dropped, "examples": len(self.examples)}


def scenario_prompt_ids(agent: Agent, task_name: str, question_text: str, alpha: float | None) -> list[int]:
    """The exact prompt an agent sees for a question under scenario α (as in ``Agent.prompt_ids``)."""
    task = get_task(task_name)
    messages = build_messages(question_text, alpha=alpha, task_format_instruction=task.instruction)
    return chat_prompt_ids(agent.tokenizer, messages)


def tokenized_example(agent: Agent, task: str, question: str, response: str, alpha: float | None,
                      max_len: int) -> TokenizedSFTExample | None:
    """Prompt (scenario α, None = plain) + response + end of turn, or None when longer than
    ``max_len`` (nothing is truncated: the caller drops and counts it)."""
    eos_id = agent.tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(f"agent {agent.name}: tokenizer has no eos_token (the end-of-turn token)")
    prompt = scenario_prompt_ids(agent, task, question, alpha)
    response_ids = agent.encode_response(response)
    if len(prompt) + len(response_ids) > max_len:
        return None
    return tokenize_sft_example(prompt, response_ids, eos_id, max_len)


def replay_examples(agent: Agent, records: Sequence[LabelRecord], count: int | None = None, *, seed: int,
                    max_len: int) -> list[TokenizedSFTExample]:
    """The plain-prompt replay rows of ``replay_records`` (those that fit ``max_len``)."""
    rows = (tokenized_example(agent, r.task, r.prompt_question, r.correct_response, None, max_len)
            for r in replay_records(records, count, seed))
    return [row for row in rows if row is not None]


def replay_records(records: Sequence[LabelRecord], count: int | None, seed: int) -> list[LabelRecord]:
    """``count`` records (with replacement only when there are fewer; None: each once) whose
    correct answer the agent gives at least REPLAY_MIN_P of the time, in a seeded order."""
    usable = sorted((r for r in records if r.correct_response is not None and r.p_correct >= REPLAY_MIN_P),
                    key=lambda r: (r.task, r.query_id))
    count = len(usable) if count is None else count
    if count <= 0 or not usable:
        return []
    rng = np.random.default_rng([seed, 7])
    picked = rng.permutation(len(usable)).tolist()
    while len(picked) < count:
        picked += rng.permutation(len(usable)).tolist()
    return [usable[i] for i in picked[:count]]


def build_sft_data(
    agent: Agent,
    records: Sequence[LabelRecord],
    *,
    alphas: Sequence[float],
    num_examples: int,
    balance: float | None,
    max_len: int,
    seed: int,
    replay_fraction: float = 0.0,
    balance_scope: str = PER_ALPHA,
) -> SFTData:
    """Tokenized SFT examples over all scenarios (``selfaware.data.scenario_targets``: at most
    ``num_examples``, balanced as ``balance_scope`` says), plus replay rows making up
    ``replay_fraction`` of the result (module docstring)."""
    if not 0.0 <= replay_fraction < 1.0:
        raise ValueError(f"sft.replay_fraction={replay_fraction!r}: must lie in [0, 1)")
    examples, dropped = [], 0

    def add(task: str, question: str, response: str, alpha: float | None) -> bool:
        nonlocal dropped
        example = tokenized_example(agent, task, question, response, alpha, max_len)
        if example is None:
            dropped += 1
            return False
        examples.append(example)
        return True

    kept = {float(alpha): {True: 0, False: 0} for alpha in alphas}
    for target in scenario_targets(records, alphas=alphas, balance=balance, scope=balance_scope, seed=seed,
                                   max_examples=num_examples):
        if add(target.task, target.prompt_question, target.response, target.alpha):
            kept[target.alpha][target.answers] += 1
    accepts = sum(k[True] for k in kept.values())
    counts = [(alpha, {"delta": round(1.0 - alpha, 6), "answers": k[True], "refusals": k[False],
                       "balanced": balance_applies(records, alphas if balance_scope == POOLED else (alpha,), balance)})
              for alpha, k in kept.items()]
    num_scenario = len(examples)
    if not examples:
        raise ValueError(f"agent {agent.name}: no SFT example fits max_len={max_len}")
    num_replay = round(num_scenario * replay_fraction / (1.0 - replay_fraction))
    for record in replay_records(records, num_replay, seed):
        add(record.task, record.prompt_question, record.correct_response, None)
    if dropped:
        logger.warning("%s: dropped %d SFT examples longer than %d tokens", agent.name, dropped, max_len)
    return SFTData(tuple(examples), accepts / num_scenario, dropped, len(examples) - num_scenario, tuple(counts),
                   balance_scope)


def sft_batch_fn(data: SFTData, *, batch_size: int, length_buckets: Sequence[int], pad_id: int, seed: int):
    """``make_batch(step, state)`` for the loop: epoch-wise permutations drawn from ``seed``."""
    n = len(data.examples)
    permutations: dict[int, np.ndarray] = {}

    def order(epoch: int) -> np.ndarray:
        if epoch not in permutations:
            permutations[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        return permutations[epoch]

    def make_batch(step: int, state):
        positions = range(step * batch_size, (step + 1) * batch_size)
        picked = [data.examples[order(p // n)[p % n]] for p in positions]
        padded = bucket_pad_batch(picked, length_buckets, pad_id, batch_size=batch_size)
        return TokenBatch.from_padded(padded), {"epoch": step * batch_size / n}

    return make_batch
