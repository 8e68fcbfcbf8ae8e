"""Pre-training and scoring one toy agent with the project's own jitted training code.

Data: each agent's corpus, as single-turn chats in the agent's own template and tokenizer (ChatML,
or Llama 3's in a mixed pool: the toy task's prompt for the bare question, the answer, the
dialect's end of turn <|im_end|> / <|eot_id|>); the model is of the agent's family
(`AgentSpec.family`), initialised and trained by the same code whatever the family:
  * its facts (`world.fact_rows`: every fact of the entities it saw; contested facts with their
    distractor rows in the first corpus that holds them), and
  * letter sequences to count (`world.practice_strings`, lengths up to its taught length, never
    a query's string),
trained as language modelling over the whole sequence (question, answer and template alike), as a
real LLM is pre-trained on text: loss on the answer alone memorises far more slowly (measured:
~3,000 vs ~800 steps to recall 2,400 facts) and leaves the embeddings of the entities an agent saw
no different from those it never saw. Every `scenario_every`-th batch instead holds facts asked
under a scenario system prompt (the routing prompt of later stages) and answered plainly, with the
loss on the answer only (instruction data): agents, like an instruct model, then answer the same
with or without the routing instructions. They never see the refusal: that is what Self-Awareness
Training teaches.

Training (`pretrain_agent`, `training.sft.make_sft_step`: masked cross-entropy, AdamW, constant
rate after warm-up) stops at the first check (every `check_every` steps) where the agent recalls
`recall_target` of its cleanly stated facts under plain and scenario prompts and counts
`recall_target` of fresh sequences of every length it was taught (teacher-forced greedy), or at
its `max_steps`. Stopping on competence rather than a step count makes every agent actually learn
what it was shown, whatever its initialisation.

Scoring (`score_agent`): greedy generation on every query of a split, checked by the toy tasks.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from disrouter_jax.generation import BucketConfig, chat_prompt_ids, generate, stop_token_ids_for
from disrouter_jax.models.decoder import Decoder
from disrouter_jax.models.config import ModelConfig
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.prompts import SUPPORTED_ALPHAS
from disrouter_jax.toy import tasks as toy_tasks
from disrouter_jax.toy.pool_config import PoolConfig, seed_for
from disrouter_jax.toy.tokenizer import special_token_ids
from disrouter_jax.toy.world import FAMILIES, HELDOUT, KNOWLEDGE, ToyWorld, skill_answer, skill_question
from disrouter_jax.training.optim import OptimConfig
from disrouter_jax.training.sft import TokenBatch, make_sft_step
from disrouter_jax.training.state import create_train_state

# Practice strings drawn per agent (cycled): enough that it learns to count, not to recall them.
PRACTICE_POOL = 4096
# Fresh sequences per taught length in the competence check.
SKILL_CHECK_PER_LENGTH = 32

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
    """{"eos", "pad", "bos"} of the agent's own tokenizer (its dialect's: <|im_end|> or <|eot_id|>...)."""
    return special_token_ids(tokenizer)


class PromptIds:
    """Token ids of the toy prompt for many questions, fast: the template's fixed text around the
    question is tokenized once per scenario and the question's own ids are spliced in.

    The question starts a line and is followed by a special token, so it is pre-tokenized on its
    own either way; the first question of every scenario is also rendered the slow way
    (`chat_prompt_ids`) and must give the same ids.
    """

    _MARK = "\u2063QUESTION\u2063"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._parts: dict[float | None, tuple[list[int], list[int]]] = {}
        self._checked: set[float | None] = set()

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []

    def __call__(self, questions: Sequence[str], alpha: float | None = None) -> list[list[int]]:
        if alpha not in self._parts:
            text = self.tokenizer.apply_chat_template(plain_messages(self._MARK, alpha), tokenize=False,
                                                      add_generation_prompt=True)
            prefix, suffix = text.split(self._MARK)
            self._parts[alpha] = tuple(self._encode([prefix, suffix]))
        prefix, suffix = self._parts[alpha]
        out = [prefix + ids + suffix for ids in self._encode(questions)]
        if out and alpha not in self._checked:
            slow = chat_prompt_ids(self.tokenizer, plain_messages(questions[0], alpha))
            if slow != out[0]:
                raise ValueError(f"PromptIds: splicing changed the tokens of {questions[0]!r}; "
                                 "the tokenizer merges across the question's boundaries")
            self._checked.add(alpha)
        return out


@dataclasses.dataclass(frozen=True)
class Rows:
    """Tokenized chats, one row each: ids = prompt + answer + end of turn; `answer_start` is the
    index of the first answer token (everything before it is the prompt)."""

    ids: tuple[tuple[int, ...], ...]
    answer_start: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def longest(self) -> int:
        return max((len(r) for r in self.ids), default=2)

    def batch(self, indices: Sequence[int], width: int, pad_id: int, *, whole_sequence: bool) -> TokenBatch:
        """Next-token batch [len(indices), width]: loss on every token (`whole_sequence`) or on
        the answer and end-of-turn only."""
        rows = len(indices)
        input_ids = np.full((rows, width), pad_id, np.int32)
        targets = np.full((rows, width), pad_id, np.int32)
        mask = np.zeros((rows, width), np.float32)
        for row, i in enumerate(indices):
            seq = self.ids[i]
            n = len(seq) - 1
            if n > width:
                raise ValueError(f"Rows.batch: a row of {n} tokens exceeds width={width}")
            input_ids[row, :n] = seq[:-1]
            targets[row, :n] = seq[1:]
            mask[row, 0 if whole_sequence else self.answer_start[i] - 1:n] = 1.0
        return TokenBatch(input_ids, targets, mask)


def tokenize_rows(pairs: Sequence[tuple[str, str]], prompt_ids: PromptIds, alphas: Sequence[float | None] = (None,)
                  ) -> Rows:
    """(question, answer) pairs as `Rows`; the i-th pair is prompted under alphas[i % len(alphas)]."""
    tokenizer = prompt_ids.tokenizer
    eos = special_ids(tokenizer)["eos"]
    answers = prompt_ids._encode([a for _, a in pairs])
    prompts: list[list[int] | None] = [None] * len(pairs)
    for k, alpha in enumerate(alphas):
        picked = list(range(k, len(pairs), len(alphas)))
        for i, ids in zip(picked, prompt_ids([pairs[i][0] for i in picked], alpha)):
            prompts[i] = ids
    return Rows(ids=tuple(tuple(p + a + [eos]) for p, a in zip(prompts, answers)),
                answer_start=tuple(len(p) for p in prompts))


@dataclasses.dataclass(frozen=True)
class Corpus:
    """An agent's pre-training rows: facts, practice sequences, and scenario-prompted facts."""

    facts: Rows
    practice: Rows
    scenario: Rows


def agent_corpus(world: ToyWorld, level: int, num_levels: int, prompt_ids: PromptIds, *, seed: int,
                 practice_size: int = PRACTICE_POOL) -> Corpus:
    fact_pairs = world.fact_rows(level, num_levels)
    letters = world.practice_strings(level, num_levels, practice_size, seed=seed)
    practice = [(skill_question(s), skill_answer(s)) for s in letters]
    # Scenario rows: the cleanly known facts (not the distractor rows) and as many practice
    # sequences, cycling the three scenarios.
    known = world.known_pairs(level, num_levels)
    scenario = tokenize_rows(list(known) + practice[:len(known)], prompt_ids, alphas=SUPPORTED_ALPHAS)
    return Corpus(facts=tokenize_rows(fact_pairs, prompt_ids), practice=tokenize_rows(practice, prompt_ids),
                  scenario=scenario)


def _cycled(num_items: int, rng: np.random.Generator):
    """Endless stream of indices: a fresh permutation per pass, so every item is seen equally."""
    while True:
        yield from rng.permutation(num_items)


def batch_stream(corpus: Corpus, *, batch_size: int, knowledge_fraction: float, pad_id: int, seed: int):
    """Endless stream of whole-sequence batches of one fixed shape: round(batch_size *
    knowledge_fraction) fact rows, the rest practice rows, each cycled in a fresh order per pass."""
    rng = np.random.default_rng(seed)
    num_facts = round(batch_size * knowledge_fraction) if len(corpus.practice) else batch_size
    num_facts = num_facts if len(corpus.facts) else 0
    width = max(corpus.facts.longest, corpus.practice.longest) - 1
    facts, practice = _cycled(len(corpus.facts), rng), _cycled(len(corpus.practice), rng)
    while True:
        fact_batch = [int(next(facts)) for _ in range(num_facts)]
        practice_batch = [int(next(practice)) for _ in range(batch_size - num_facts)]
        a = corpus.facts.batch(fact_batch, width, pad_id, whole_sequence=True)
        b = corpus.practice.batch(practice_batch, width, pad_id, whole_sequence=True)
        yield TokenBatch(*(np.concatenate([x, y]) for x, y in
                           zip((a.input_ids_bt, a.targets_bt, a.loss_mask_bt), (b.input_ids_bt, b.targets_bt, b.loss_mask_bt))))


def scenario_stream(corpus: Corpus, *, batch_size: int, pad_id: int, seed: int):
    """Endless stream of scenario-prompted fact batches, loss on every token: the agent reads the
    routing instructions (the refusal phrase among them) as text, as an instruct model has read
    such text, and still answers plainly; it never *gives* the refusal."""
    rng = np.random.default_rng(seed)
    order = _cycled(len(corpus.scenario), rng)
    width = corpus.scenario.longest - 1
    while True:
        yield corpus.scenario.batch([int(next(order)) for _ in range(batch_size)], width, pad_id, whole_sequence=True)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@nnx.jit
def _rows_recalled(model, input_ids_bt, targets_bt, loss_mask_bt):
    """[B] bool: every trained token of the row is the model's argmax (= greedy reproduces it)."""
    hits_bt = jnp.argmax(model(input_ids_bt), axis=-1) == targets_bt
    return jnp.all(hits_bt | (loss_mask_bt == 0), axis=-1)


def recalled_rows(model: Decoder, rows: TokenBatch, chunk: int = 512) -> np.ndarray:
    """[B] bool per row of `rows`: greedy decoding reproduces its answer tokens exactly. Rows go
    through in chunks of `chunk` (the last one padded), so one program serves any count."""
    count = rows.input_ids_bt.shape[0]
    out = []
    for start in range(0, count, chunk):
        pieces = [np.asarray(x[start:start + chunk]) for x in (rows.input_ids_bt, rows.targets_bt, rows.loss_mask_bt)]
        pad = chunk - pieces[0].shape[0]
        pieces = [np.pad(x, ((0, pad), (0, 0))) for x in pieces]
        out.append(np.asarray(_rows_recalled(model, *map(jnp.asarray, pieces)))[:chunk - pad])
    return np.concatenate(out) if out else np.zeros((0,), bool)


class CompetenceCheck:
    """Whether an agent has learnt what it was shown (module docstring): recall of its clean facts
    under the plain and the scenario prompts, and counting fresh sequences of every length it
    was taught. The scenario set is only checked once the plain one passes (training goes on
    either way below the target, so skipping it changes nothing) and for the final report."""

    def __init__(self, world: ToyWorld, level: int, num_levels: int, prompt_ids: PromptIds, *, pad_id: int,
                 target: float, seed: int, scenario: bool):
        known = world.known_pairs(level, num_levels)
        low, high = world.config.skill_lengths[0], world.taught_length(level, num_levels)
        fresh = [s for s in world.practice_strings(level, num_levels, 50 * SKILL_CHECK_PER_LENGTH * (high - low + 1),
                                                    seed=seed)]
        by_length = {length: [s for s in fresh if len(s) == length][:SKILL_CHECK_PER_LENGTH]
                     for length in range(low, high + 1)}
        skill = [(skill_question(s), skill_answer(s)) for group in by_length.values() for s in group]
        self._sets = {"facts": tokenize_rows(known, prompt_ids), "skill": tokenize_rows(skill, prompt_ids)}
        if scenario:
            self._sets["scenario"] = tokenize_rows(list(known) + skill, prompt_ids, alphas=SUPPORTED_ALPHAS)
        self.target = target
        self.pad_id = pad_id

    def _score(self, model, name: str) -> float:
        rows = self._sets[name]
        if not len(rows):
            return 1.0
        batch = rows.batch(range(len(rows)), rows.longest - 1, self.pad_id, whole_sequence=False)
        return float(recalled_rows(model, batch).mean())

    def __call__(self, model, *, final: bool = False) -> dict[str, float]:
        scores = {"facts": self._score(model, "facts"), "skill": self._score(model, "skill")}
        if "scenario" in self._sets:
            passed = all(v >= self.target for v in scores.values())
            scores["scenario"] = self._score(model, "scenario") if passed or final else float("nan")
        return scores

    def reached(self, scores: dict[str, float]) -> bool:
        return all(v >= self.target for v in scores.values())  # NaN (skipped) >= target is False


def agent_model_config(config: PoolConfig, level: int, tokenizer) -> ModelConfig:
    ids = special_ids(tokenizer)
    # As in Qwen2.5: eos = <|im_end|>, bos = <|endoftext|> (never prepended by the tokenizer); as in
    # Llama 3: eos = <|eot_id|>, bos = <|begin_of_text|> (the template writes it).
    return config.agents[level].model_config(
        len(tokenizer), eos_token_id=ids["eos"], bos_token_id=ids["bos"], rope_theta=config.rope_theta,
        max_position_embeddings=config.max_position_embeddings)


@dataclasses.dataclass(frozen=True)
class PretrainReport:
    steps: int  # optimizer updates (<= max_steps)
    competence: dict[str, float]  # at the end: recall of facts (plain / scenario prompts), skill
    final_loss: float
    loss_curve: tuple[tuple[int, float], ...]  # (step, loss) at every check


def pretrain_agent(config: PoolConfig, level: int, world: ToyWorld, tokenizer, *, progress: bool = False,
                   prompt_ids: PromptIds | None = None) -> tuple[Decoder, PretrainReport]:
    """Initialise agent `level` from the pool seed and pre-train it (module docstring)."""
    from tqdm.auto import tqdm

    spec = config.agents[level]
    num_levels = len(config.agents)
    pad_id = special_ids(tokenizer)["pad"]
    prompt_ids = PromptIds(tokenizer) if prompt_ids is None else prompt_ids
    corpus = agent_corpus(world, level, num_levels, prompt_ids, seed=seed_for(config.seed, level, 3))
    plain_batches = batch_stream(corpus, batch_size=spec.batch_size, knowledge_fraction=config.knowledge_fraction,
                                 pad_id=pad_id, seed=seed_for(config.seed, level, 1))
    scenario_batches = None
    if config.scenario_every:
        scenario_batches = scenario_stream(corpus, batch_size=config.scenario_batch_size, pad_id=pad_id,
                                           seed=seed_for(config.seed, level, 2))
    check = CompetenceCheck(world, level, num_levels, prompt_ids, pad_id=pad_id, target=config.recall_target,
                            seed=seed_for(config.seed, level, 4), scenario=bool(config.scenario_every))

    optim = OptimConfig(learning_rate=spec.learning_rate, total_steps=spec.max_steps,
                        warmup_steps=config.warmup_steps, decay="constant", weight_decay=config.weight_decay,
                        b2=config.adam_b2, max_grad_norm=config.max_grad_norm)
    model = Decoder(agent_model_config(config, level, tokenizer), rngs=nnx.Rngs(seed_for(config.seed, level, 0)))
    state = create_train_state(model, optim)
    train_step = make_sft_step(optim)
    loss_curve: list[tuple[int, float]] = []
    scores: dict[str, float] = {}
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
            scores = check(state.model(), final=step == spec.max_steps)
            bar.set_postfix(loss=f"{float(host['loss']):.3f}", **{k: f"{v:.2f}" for k, v in scores.items()})
            if check.reached(scores):
                bar.total = step
                bar.refresh()
                break
    return state.model(), PretrainReport(steps=step, competence=scores,
                                         final_loss=float(jax.device_get(metrics)["loss"]),
                                         loss_curve=tuple(loss_curve))


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def score_agent(model: Decoder, tokenizer, world: ToyWorld, *, split: str = HELDOUT,
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
    prompt_ids = PromptIds(tokenizer)
    prompts = [prompt_ids([q.question for q in queries], alpha) for alpha in alphas]
    longest = max((len(p) for per_alpha in prompts for p in per_alpha), default=1)
    buckets = BucketConfig(prompt_lengths=(BucketConfig().prompt_bucket(longest),))
    stop_token_ids = stop_token_ids_for(tokenizer, model_dir)
    scores = []
    for per_alpha in prompts:
        generations = generate(model, per_alpha, max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids,
                               max_batch_size=256, buckets=buckets, progress=False)
        correct: dict[str, list[str]] = {family: [] for family in FAMILIES}
        for query, example, samples in zip(queries, examples, generations):
            response = tokenizer.decode(samples[0].token_list, skip_special_tokens=True)
            if toy_tasks.task_for_family(query.family).check(example, response).correct:
                correct[query.family].append(query.id)
        scores.append({family: tuple(ids) for family, ids in correct.items()})
    return scores


__all__ = [
    "CompetenceCheck", "Corpus", "PretrainReport", "PromptIds", "Rows", "agent_corpus", "agent_model_config",
    "batch_stream", "plain_messages", "pretrain_agent", "recalled_rows", "scenario_stream", "score_agent",
    "special_ids", "tokenize_rows",
]
