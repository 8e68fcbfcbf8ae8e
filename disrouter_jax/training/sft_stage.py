"""Stage 2: SFT on self-labelled targets (the agent's own correct answer, or the refusal).

For each configured scenario α the labels give targets with threshold δ = 1 − α, balanced
accept/reject; the prompt carries that scenario's instruction, so one model learns every scenario.
Batches are a pure function of the step index (an epoch-wise permutation from the seed).
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
    bucket_pad_batch,
    sft_targets,
    tokenize_sft_example,
)
from disrouter_jax.tasks.prompts import build_messages
from disrouter_jax.tasks.registry import get_task
from disrouter_jax.training.sft import TokenBatch

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SFTData:
    examples: tuple[TokenizedSFTExample, ...]
    accept_fraction: float
    num_dropped: int


def scenario_prompt_ids(agent: Agent, task_name: str, question_text: str, alpha: float | None) -> list[int]:
    """The exact prompt an agent sees for a question under scenario α (as in ``Agent.prompt_ids``)."""
    task = get_task(task_name)
    messages = build_messages(question_text, alpha=alpha, task_format_instruction=task.instruction)
    return chat_prompt_ids(agent.tokenizer, messages)


def build_sft_data(
    agent: Agent,
    records: Sequence[LabelRecord],
    *,
    alphas: Sequence[float],
    num_examples: int,
    balance: float | None,
    max_len: int,
    seed: int,
) -> SFTData:
    """Tokenized SFT examples over all scenarios: ``num_examples`` split evenly across α."""
    eos_id = agent.tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(f"agent {agent.name}: tokenizer has no eos_token (the end-of-turn token)")
    per_alpha = max(1, num_examples // len(alphas))
    examples, accepts, dropped = [], 0, 0
    for i, alpha in enumerate(alphas):
        targets = sft_targets(records, alpha=alpha, balance=balance, seed=seed + i, max_examples=per_alpha)
        for target in targets:
            prompt = scenario_prompt_ids(agent, target.task, target.prompt_question, alpha)
            response = agent.encode_response(target.response)
            if len(prompt) + len(response) > max_len:  # nothing is truncated: drop and count
                dropped += 1
                continue
            examples.append(tokenize_sft_example(prompt, response, eos_id, max_len))
            accepts += target.answers
    if not examples:
        raise ValueError(f"agent {agent.name}: no SFT example fits max_len={max_len}")
    if dropped:
        logger.warning("%s: dropped %d SFT examples longer than %d tokens", agent.name, dropped, max_len)
    return SFTData(tuple(examples), accepts / len(examples), dropped)


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
