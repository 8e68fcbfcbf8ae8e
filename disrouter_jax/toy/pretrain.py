"""Pre-training and scoring one toy agent with the project's own jitted training code.

Data: `world.pretraining_corpus(level, n)` as single-turn ChatML chats, tokenized with
`selfaware.data.tokenize_sft_example` (prompt = the toy task's messages for the bare question,
response = the answer + <|im_end|>) and padded with `bucket_pad_batch` to one fixed shape per
stream, so the SFT step compiles once per stream.

Training (`pretrain_agent`), with `training.sft.make_sft_step` (masked CE, AdamW, constant
learning rate after warm-up): batches of plain prompts (mostly facts), every `scenario_every`-th
one with scenario system prompts instead (the routing prompt of later stages, answered plainly),
until the agent recalls `recall_target` of its facts under both kinds of prompt (checked every
`check_every` steps, teacher-forced greedy: `RecallCheck`) or `max_steps`. Stopping on recall keeps
the time bounded while making every agent actually learn its facts: when the plateau before recall
ends varies from seed to seed, so a fixed step count would leave some agents with nothing memorised
and break the capability ladder.

Scoring (`score_agent`): greedy generation on every query of a split, checked by the toy tasks.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from disrouter_jax.generation import BucketConfig, chat_prompt_ids, generate, stop_token_ids_for
from disrouter_jax.models import qwen2
from disrouter_jax.selfaware.data import TokenizedSFTExample, bucket_pad_batch, tokenize_sft_example
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.prompts import SUPPORTED_ALPHAS
from disrouter_jax.toy import tasks as toy_tasks
from disrouter_jax.toy.pool_config import PoolConfig, seed_for
from disrouter_jax.toy.tokenizer import IM_END, PAD_TOKEN
from disrouter_jax.toy.world import FAMILIES, HELDOUT, KNOWLEDGE, SKILL, ToyWorld
from disrouter_jax.training.optim import OptimConfig
from disrouter_jax.training.sft import TokenBatch, make_sft_step
from disrouter_jax.training.state import create_train_state

# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def plain_messages(question: str, alpha: float | None = None) -> list[dict[str, str]]:
    """The chat a toy agent is pre-trained and scored on: exactly the toy task's prompt (bare
    question; with `alpha` the scenario system message, else the template's default one)."""
    task = toy_tasks.task_for_family(KNOWLEDGE)
    example = Example(task=task.name, id="q", question=question, gold=("x",), answer_type="span")
    return task.messages(example, alpha=alpha)


def special_ids(tokenizer) -> dict[str, int]:
    return {"eos": tokenizer.convert_tokens_to_ids(IM_END), "pad": tokenizer.convert_tokens_to_ids(PAD_TOKEN)}


class TokenCache:
    """Token ids of prompts and answers already rendered with one tokenizer: the agents of a pool
    share most of their corpus, and rendering the chat template is the slow part."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._prompts: dict[tuple[str, float | None], list[int]] = {}
        self._texts: dict[str, list[int]] = {}

    def prompt(self, question: str, alpha: float | None) -> list[int]:
        key = (question, alpha)
        if key not in self._prompts:
            self._prompts[key] = chat_prompt_ids(self.tokenizer, plain_messages(question, alpha))
        return self._prompts[key]

    def text(self, text: str) -> list[int]:
        if text not in self._texts:
            self._texts[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._texts[text]


def tokenized_pairs(pairs, tokenizer, *, scenario: bool = False, cache: TokenCache | None = None
                    ) -> list[TokenizedSFTExample]:
    """(question, answer) pairs as chat examples (prompt = the toy task's messages, response = the
    answer + <|im_end|>). scenario=True: the i-th pair is prompted with the scenario of
    SUPPORTED_ALPHAS[i % 3]; the response is still the plain answer."""
    cache = TokenCache(tokenizer) if cache is None else cache
    if cache.tokenizer is not tokenizer:
        raise ValueError("tokenized_pairs: cache was built for another tokenizer")
    eos_id = special_ids(tokenizer)["eos"]
    return [tokenize_sft_example(cache.prompt(question, SUPPORTED_ALPHAS[i % len(SUPPORTED_ALPHAS)] if scenario
                                              else None), cache.text(answer), eos_id)
            for i, (question, answer) in enumerate(pairs)]


def pretraining_examples(world: ToyWorld, tokenizer, level: int, num_levels: int, *, scenario: bool = False,
                         cache: TokenCache | None = None) -> dict[str, list[TokenizedSFTExample]]:
    """{family: tokenized examples} of `world.pretraining_corpus(level, num_levels)`, in order
    (see `tokenized_pairs`; `cache` is reused across calls)."""
    fact_questions = {f.question for f in world.facts}
    corpus = world.pretraining_corpus(level, num_levels)
    examples = tokenized_pairs(corpus, tokenizer, scenario=scenario, cache=cache)
    out: dict[str, list[TokenizedSFTExample]] = {KNOWLEDGE: [], SKILL: []}
    for (question, _), example in zip(corpus, examples):
        out[KNOWLEDGE if question in fact_questions else SKILL].append(example)
    return out


def longest_example(examples: Mapping[str, Sequence[TokenizedSFTExample]]) -> int:
    return max(len(ex.input_ids) for family in examples.values() for ex in family)


def _cycled_indices(num_items: int, rng: np.random.Generator):
    """Endless stream of indices: a fresh permutation per pass, so every item is seen equally."""
    while True:
        yield from rng.permutation(num_items)


def batch_stream(examples: Mapping[str, Sequence[TokenizedSFTExample]], *, batch_size: int,
                 knowledge_fraction: float, length_bucket: int, pad_id: int, seed: int):
    """Endless stream of padded `TokenBatch`es of the fixed shape [batch_size, length_bucket]:
    round(batch_size * knowledge_fraction) fact rows (all rows if there is no arithmetic), the
    rest arithmetic rows, each family cycled through in a fresh random order per pass."""
    rng = np.random.default_rng(seed)
    num_knowledge = round(batch_size * knowledge_fraction) if examples[SKILL] else batch_size
    if not examples[KNOWLEDGE]:
        num_knowledge = 0
    counts = {KNOWLEDGE: num_knowledge, SKILL: batch_size - num_knowledge}
    streams = {family: _cycled_indices(len(examples[family]), rng) for family in counts if counts[family]}
    while True:
        rows = [examples[family][next(streams[family])] for family in counts for _ in range(counts[family])]
        padded = bucket_pad_batch(rows, [length_bucket], pad_id, batch_size=batch_size)
        if padded.num_dropped:
            raise ValueError(f"batch_stream: {padded.num_dropped} examples exceed length_bucket={length_bucket}")
        yield TokenBatch.from_padded(padded)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@nnx.jit
def _rows_recalled(model, input_ids_bt, targets_bt, loss_mask_bt):
    """[B] bool: every trained token of the row is the model's argmax (= greedy reproduces it)."""
    hits_bt = jnp.argmax(model(input_ids_bt), axis=-1) == targets_bt
    return jnp.all(hits_bt | (loss_mask_bt == 0), axis=-1)


def recalled_rows(model: qwen2.Qwen2, rows: TokenBatch) -> np.ndarray:
    """[B] bool per row of `rows`: greedy decoding reproduces its trained tokens exactly."""
    if rows.input_ids_bt.shape[0] == 0:
        return np.zeros((0,), bool)
    return np.asarray(_rows_recalled(model, jnp.asarray(rows.input_ids_bt), jnp.asarray(rows.targets_bt),
                                     jnp.asarray(rows.loss_mask_bt)))


class RecallCheck:
    """Share of the taught pairs an agent recalls (`recalled_rows`) under plain prompts and, with
    scenario batches, under scenario prompts.

    Both sets are padded to one shape [pairs, longest of either], so one compiled program checks
    either. The scenario set is checked only where it can matter: when the plain set reaches the
    target (training may stop) and for the final report. Below the target on plain prompts training
    goes on whatever the scenario recall, so skipping it there changes neither the stopping step nor
    the reported recall, and halves the cost of most checks.
    """

    def __init__(self, plain: Sequence[TokenizedSFTExample], scenario: Sequence[TokenizedSFTExample] | None, *,
                 pad_id: int, target: float):
        width = max((len(ex.input_ids) for ex in [*plain, *(scenario or ())]), default=1)
        self._plain, self._scenario = (
            None if examples is None else TokenBatch.from_padded(bucket_pad_batch(examples, [width], pad_id))
            for examples in (plain, scenario))
        self.num_pairs = len(plain)
        self.target = target

    def __call__(self, model: qwen2.Qwen2, *, final: bool = False) -> tuple[float, float | None]:
        """(plain recall, scenario recall): scenario is None without scenario batches and NaN where
        it was skipped (plain recall below the target and not `final`)."""
        if self.num_pairs == 0:
            return 1.0, None if self._scenario is None else 1.0
        plain = float(recalled_rows(model, self._plain).mean())
        if self._scenario is None:
            return plain, None
        if plain < self.target and not final:
            return plain, float("nan")
        return plain, float(recalled_rows(model, self._scenario).mean())

    def reached(self, recalled: tuple[float, float | None]) -> bool:
        return all(r >= self.target for r in recalled if r is not None)  # NaN (skipped) >= target is False


def agent_model_config(config: PoolConfig, level: int, tokenizer) -> qwen2.Qwen2Config:
    ids = special_ids(tokenizer)
    # As in Qwen2.5: eos = <|im_end|>, bos = <|endoftext|> (never prepended by the tokenizer).
    return config.agents[level].model_config(
        len(tokenizer), eos_token_id=ids["eos"], bos_token_id=ids["pad"], rope_theta=config.rope_theta,
        max_position_embeddings=config.max_position_embeddings)


@dataclasses.dataclass(frozen=True)
class PretrainReport:
    steps: int  # optimizer updates (<= max_steps)
    fact_recall: float  # at the end, on the agent's own facts, plain prompts
    fact_recall_scenario: float | None  # the same under scenario prompts (None: no scenario batches)
    final_loss: float
    loss_curve: tuple[tuple[int, float], ...]  # (step, loss) at every check


def pretrain_agent(config: PoolConfig, level: int, world: ToyWorld, tokenizer, *, progress: bool = False,
                   cache: TokenCache | None = None) -> tuple[qwen2.Qwen2, PretrainReport]:
    """Initialise agent `level` from the pool seed and pre-train it (module docstring)."""
    from tqdm.auto import tqdm

    spec = config.agents[level]
    num_levels = len(config.agents)
    pad_id = special_ids(tokenizer)["pad"]
    cache = TokenCache(tokenizer) if cache is None else cache

    taught = world.taught_pairs(level, num_levels)

    def stream(scenario: bool, batch_size: int, seed_tag: int):
        examples = pretraining_examples(world, tokenizer, level, num_levels, scenario=scenario, cache=cache)
        width = longest_example(examples)  # one fixed shape per stream: one compilation each
        batches = batch_stream(examples, batch_size=batch_size, knowledge_fraction=config.knowledge_fraction,
                               length_bucket=width, pad_id=pad_id, seed=seed_for(config.seed, level, seed_tag))
        return batches, tokenized_pairs(taught, tokenizer, scenario=scenario, cache=cache)

    # Recall is checked on every taught pair (facts and skill problems), not on practice problems.
    plain_batches, facts = stream(False, spec.batch_size, 1)
    scenario_batches, scenario_facts = None, None
    if config.scenario_every:
        scenario_batches, scenario_facts = stream(True, config.scenario_batch_size, 2)
    recall = RecallCheck(facts, scenario_facts, pad_id=pad_id, target=config.recall_target)

    optim = OptimConfig(learning_rate=spec.learning_rate, total_steps=spec.max_steps,
                        warmup_steps=config.warmup_steps, decay="constant", weight_decay=config.weight_decay,
                        b2=config.adam_b2, max_grad_norm=config.max_grad_norm)
    model = qwen2.Qwen2(agent_model_config(config, level, tokenizer), rngs=nnx.Rngs(seed_for(config.seed, level, 0)))
    state = create_train_state(model, optim)
    train_step = make_sft_step(optim)
    loss_curve: list[tuple[int, float]] = []
    recalled: tuple[float, float | None] = (0.0, None)
    metrics: dict = {}
    with tqdm(total=spec.max_steps, desc=f"{spec.name} [{level + 1}/{num_levels}]", unit="step",
              disable=not progress) as bar:
        for step in range(1, spec.max_steps + 1):
            use_scenario = scenario_batches is not None and step % config.scenario_every == 0
            state, metrics = train_step(state, next(scenario_batches if use_scenario else plain_batches))
            bar.update(1)
            if step % config.check_every and step != spec.max_steps:
                continue
            host = jax.device_get(metrics)
            if not host["update_applied"]:
                raise FloatingPointError(f"agent {spec.name!r}: non-finite loss or gradient at step {step} "
                                         f"(loss={float(host['loss'])}); lower its learning_rate")
            loss_curve.append((step, round(float(host["loss"]), 4)))
            recalled = recall(state.model(), final=step == spec.max_steps)
            bar.set_postfix(loss=f"{float(host['loss']):.3f}", recall=f"{recalled[0]:.2f}")
            if recall.reached(recalled):
                bar.total = step
                bar.refresh()
                break
    return state.model(), PretrainReport(steps=step, fact_recall=recalled[0], fact_recall_scenario=recalled[1],
                                         final_loss=float(jax.device_get(metrics)["loss"]),
                                         loss_curve=tuple(loss_curve))


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def score_agent(model: qwen2.Qwen2, tokenizer, world: ToyWorld, *, split: str = HELDOUT,
                alphas: Sequence[float | None] = (None,), max_new_tokens: int = 10,
                model_dir: str | os.PathLike | None = None) -> list[dict[str, tuple[str, ...]]]:
    """Greedy answers to every query of `split`, once per scenario of `alphas` (None = plain
    prompt), checked by the toy tasks. Returns, per alpha, {family: ids of the queries answered
    correctly}.

    Every alpha's prompts are padded to the bucket of the longest prompt of all of them, so one
    prefill and one decode program serve every alpha (compiling them is most of the cost). Padding
    is masked: the answers are those of scoring each alpha alone.
    """
    queries = world.queries_for(split)
    examples = [toy_tasks.query_to_example(q) for q in queries]
    prompts = [[chat_prompt_ids(tokenizer, toy_tasks.task_for_family(q.family).messages(ex, alpha=alpha))
                for q, ex in zip(queries, examples)] for alpha in alphas]
    longest = max((len(p) for per_alpha in prompts for p in per_alpha), default=1)
    buckets = BucketConfig(prompt_lengths=(BucketConfig().prompt_bucket(longest),))
    stop_token_ids = stop_token_ids_for(tokenizer, model_dir)
    scores = []
    for per_alpha in prompts:
        generations = generate(model, per_alpha, max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids,
                               max_batch_size=128, buckets=buckets, progress=False)
        correct: dict[str, list[str]] = {family: [] for family in FAMILIES}
        for query, example, samples in zip(queries, examples, generations):
            response = tokenizer.decode(samples[0].token_list, skip_special_tokens=True)
            if toy_tasks.task_for_family(query.family).check(example, response).correct:
                correct[query.family].append(query.id)
        scores.append({family: tuple(ids) for family, ids in correct.items()})
    return scores


__all__ = [
    "PretrainReport", "RecallCheck", "TokenCache", "agent_model_config", "batch_stream", "plain_messages",
    "pretrain_agent", "pretraining_examples", "recalled_rows", "score_agent", "special_ids", "tokenized_pairs",
]
