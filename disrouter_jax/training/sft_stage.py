"""Stage 2: SFT on self-labelled targets (the agent's own correct answer, or the refusal).

For each configured scenario α the labels give targets with threshold δ = 1 − α, balanced
accept/reject; the prompt carries that scenario's instruction, so one model learns every scenario.
Batches are a pure function of the step index (an epoch-wise permutation from the seed).

What is trained (``trainable``):
  * ``"all"``: full fine-tuning (or LoRA adapters, chosen by the caller).
  * ``"refusal_rows"``: only the embedding rows of the refusal's tokens (the model's input and,
    with tied embeddings, output vectors of ``I don't know!``); every other weight stays exactly
    as pre-trained. For an agent that has never produced the refusal (the toy agents never see it
    in pre-training: its tokens start 10-17 nats below the answer) these rows are effectively new
    tokens, and training a new token's rows alone is the standard way to add it without dragging
    the rest of the network: full fine-tuning towards a 15-nat target moves every weight by
    Adam's step size and erased most held-out facts of the toy agents. Refusing then becomes a
    linear read-out of the agent's own final hidden state, i.e. of what it knows, and the same
    rows let RL move each scenario's threshold.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from disrouter_jax.agents import Agent
from disrouter_jax.generation import chat_prompt_ids
from disrouter_jax.selfaware.data import (
    LabelRecord,
    TokenizedSFTExample,
    bucket_pad_batch,
    sft_refusal_weight,
    sft_targets,
    should_answer,
    tokenize_sft_example,
)
from disrouter_jax.tasks.prompts import REFUSAL, build_messages
from disrouter_jax.tasks.registry import get_task
from disrouter_jax.training.optim import OptimConfig, make_optimizer
from disrouter_jax.training.sft import TokenBatch

logger = logging.getLogger(__name__)
TRAINABLE = ("all", "refusal_rows", "new_tokens")
EMBEDDING_PARAM = "embedding_vd"


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
    refusal_weight_gamma: float = 0.0,
) -> SFTData:
    """Tokenized SFT examples over all scenarios: ``num_examples`` split evenly across α.

    ``refusal_weight_gamma`` > 0 weights the loss of each refusal target by
    ``sft_refusal_weight(alpha, refusal_weight_gamma)`` = (1 − α)^γw (answer targets weigh 1), so
    the scenario's cost of refusing moves its refusal prior; 0 keeps every example at weight 1.
    """
    eos_id = agent.tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(f"agent {agent.name}: tokenizer has no eos_token (the end-of-turn token)")
    per_alpha = max(1, num_examples // len(alphas))
    examples, accepts, dropped = [], 0, 0
    for i, alpha in enumerate(alphas):
        alpha_balance = balance
        if balance is not None and 0.0 < balance < 1.0:
            answers = sum(should_answer(r.p_correct, alpha) for r in records)
            if answers in (0, len(records)):
                # One class is empty (e.g. a weak agent never reaches p >= 0.8): balancing is
                # impossible, and the labels are still right — keep them all rather than drop α.
                logger.warning("%s: alpha=%s has only %s targets (%d records); not balancing this scenario",
                               agent.name, alpha, "refusal" if answers == 0 else "answer", len(records))
                alpha_balance = None
        targets = sft_targets(records, alpha=alpha, balance=alpha_balance, seed=seed + i, max_examples=per_alpha)
        for target in targets:
            prompt = scenario_prompt_ids(agent, target.task, target.prompt_question, alpha)
            response = agent.encode_response(target.response)
            if len(prompt) + len(response) > max_len:  # nothing is truncated: drop and count
                dropped += 1
                continue
            example = tokenize_sft_example(prompt, response, eos_id, max_len)
            weight = 1.0 if target.answers else sft_refusal_weight(alpha, refusal_weight_gamma)
            if weight != 1.0:
                example = example._replace(loss_mask=example.loss_mask * np.float32(weight))
            examples.append(example)
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


# ------------------------------------------------------------------------------ what is trained


def refusal_token_ids(agent: Agent) -> tuple[int, ...]:
    """The distinct token ids of the refusal text as the agent writes it (response encoding)."""
    ids = tuple(dict.fromkeys(int(t) for t in agent.encode_response(REFUSAL)))
    if not ids:
        raise ValueError(f"agent {agent.name}: the refusal {REFUSAL!r} encodes to no token")
    return ids


def _is_embedding(path) -> bool:
    return any(getattr(key, "key", getattr(key, "name", None)) == EMBEDDING_PARAM for key in path)


def embedding_rows_optimizer(optim: OptimConfig, row_ids, vocab_size: int, *,
                             train_other_params: bool = False) -> optax.GradientTransformation:
    """``make_optimizer(optim)`` restricted to rows ``row_ids`` of the embedding matrix.

    The other rows' gradients are zeroed before clipping and Adam, and their updates after them
    (so weight decay cannot touch a frozen row either). Every other parameter the optimizer sees
    is frozen the same way, or, with ``train_other_params`` (e.g. LoRA adapters next to the
    rows), trained normally.
    """
    rows = np.asarray(sorted(set(int(i) for i in row_ids)), np.int64)
    if rows.size == 0 or rows.min() < 0 or rows.max() >= vocab_size:
        raise ValueError(f"embedding_rows_optimizer: row ids {rows.tolist()} must lie in [0, {vocab_size})")
    row_mask_v1 = np.zeros((vocab_size, 1), np.float32)
    row_mask_v1[rows] = 1.0

    def only_rows(tree):
        def one(path, x):
            if _is_embedding(path):
                if x.shape[0] != vocab_size:
                    raise ValueError(f"{EMBEDDING_PARAM} has {x.shape[0]} rows, expected vocab_size={vocab_size}")
                return x * jnp.asarray(row_mask_v1, x.dtype)
            return x if train_other_params else jnp.zeros_like(x)

        return jax.tree_util.tree_map_with_path(one, tree)

    def mask_updates(updates, state, params=None):
        del params
        return only_rows(updates), state

    masked = optax.GradientTransformation(lambda params: optax.EmptyState(), mask_updates)
    return optax.chain(masked, make_optimizer(optim), masked)


def scenario_only_token_ids(agent: Agent, examples, alphas: Sequence[float]) -> tuple[int, ...]:
    """Tokens of the scenario prompts that no plain prompt of ``examples`` contains: the words of
    the scenario instructions (their rows act as a soft prompt per scenario)."""
    plain, scenario = set(), set()
    for example in examples:
        plain.update(agent.prompt_ids(example, None))
        for alpha in alphas:
            scenario.update(agent.prompt_ids(example, float(alpha)))
    return tuple(sorted(scenario - plain))


def trainable_rows(trainable: str, agent: Agent, examples=(), alphas: Sequence[float] = ()) -> tuple[int, ...] | None:
    """Embedding rows a stage trains: None for every weight (``"all"``), the refusal's tokens
    (``"refusal_rows"``), or those plus the scenario-only tokens (``"new_tokens"``: every token a
    plain prompt never shows, so the agent's plain-prompt logits stay exactly as pre-trained
    except for the refusal's)."""
    if trainable == "all":
        return None
    if trainable == "refusal_rows":
        return refusal_token_ids(agent)
    if trainable == "new_tokens":
        if not examples or not alphas:
            raise ValueError("trainable='new_tokens' needs the training examples and the scenario alphas")
        return tuple(sorted(set(refusal_token_ids(agent)) | set(scenario_only_token_ids(agent, examples, alphas))))
    raise ValueError(f"trainable={trainable!r}: expected one of {TRAINABLE}")


def stage_optimizer(optim: OptimConfig, rows: Sequence[int] | None, agent: Agent, *, with_lora: bool = False
                    ) -> OptimConfig | optax.GradientTransformation:
    """What ``create_train_state`` gets for a stage: the plain optimizer (``rows=None``) or one
    restricted to those embedding rows (see :func:`trainable_rows`), next to LoRA adapters when
    ``with_lora``."""
    if rows is None:
        return optim
    return embedding_rows_optimizer(optim, rows, agent.model.config.vocab_size, train_other_params=with_lora)
