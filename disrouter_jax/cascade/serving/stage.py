"""One agent's stage of the served cascade: a batch of rows in, one reply per row out.

A stage generates exactly as the offline engine's ``engine.agent_replies`` does — the same
prompts (the agent's own chat template; the scenario instruction as the system message, the last
agent on the plain prompt), stop tokens, early refusal predicate and bucketed ``generate`` — so a
greedy row's reply is the offline reply whatever rows share its batch.

Rows differ in sampling parameters. Rows with the same (temperature, top_p) run as one
``generate`` call (greedy rows all together); ``max_tokens`` only differs by how far a row may
run, so a call runs to the largest budget of its rows and each row is cut at its own (the tokens
of the first ``n`` steps do not depend on the budget, so this equals running it alone with
``max_new_tokens=n``). A sampled row's randomness comes from its own key id (the request's seed),
never from its position in the batch (``generate(key_ids=...)``).

Shapes: a stage pads prompts to its few prompt-length buckets and sizes every token buffer for
the server's ``max_new_tokens`` (the loop still stops at the rows' largest budget), so the
programs a greedy request can need are (batch bucket x prompt bucket), all compiled by
:meth:`AgentStage.warm` (a prompt past the largest bucket compiles on first use).

Streaming: a row may come with a listener; it gets the row's tokens while the agent generates
them, from the first step at which the reply can no longer become a refusal
(``checkers.refusal_status``; the last agent's from its first token), so a client sees the
answering agent's tokens as they come and never a refusal that is forwarded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from flax import nnx

from disrouter_jax.agents import Agent
from disrouter_jax.cascade.engine import refusal_early_stop, refusal_token_ids
from disrouter_jax.generation import BucketConfig, chat_prompt_ids, generate
from disrouter_jax.generation.buckets import next_power_of_two
from disrouter_jax.tasks.checkers import is_refusal, refusal_status
from disrouter_jax.tasks.prompts import scenario_instruction

REPLACEMENT_CHAR = "\ufffd"  # a decoded prefix that ends inside a multi-byte character
Listener = Callable[[Sequence[int]], None]  # gets a row's next tokens (the stop token never)


def stage_buckets(prompt_buckets: Sequence[int], max_new_tokens: int) -> BucketConfig:
    """A stage's buckets: the prompt-length buckets given (a longer prompt rounds up to a multiple
    of the largest, compiled on first use) and one token-buffer size for every ``max_tokens`` (the
    loop still stops at the batch's largest budget)."""
    return BucketConfig(prompt_lengths=tuple(int(b) for b in prompt_buckets),
                        new_tokens=(next_power_of_two(max(max_new_tokens, 16)),))


class _RowStream:
    """One listened row of a ``generate`` call: its tokens by step, passed on once decided."""

    def __init__(self, listener: Listener, budget: int, stop_ids, decode, always_answers: bool):
        self.listener, self.budget, self.stop_ids, self.decode = listener, budget, stop_ids, decode
        self.tokens: list[int] = []
        self.pending: dict[int, int] = {}  # steps that came early (callbacks are not ordered)
        self.decided = always_answers
        self.ended = False
        self.sent = 0

    def push(self, step: int, token: int) -> None:
        self.pending[step] = token
        while not self.ended and len(self.tokens) in self.pending:
            token = self.pending.pop(len(self.tokens))
            if len(self.tokens) >= self.budget or token in self.stop_ids:
                self.ended = True  # past this row's own budget (a call runs to the largest), or its turn ended
                break
            self.tokens.append(token)
            if len(self.tokens) == self.budget:
                self.ended = True
        if not self.decided and self.tokens:
            text = self.decode(self.tokens)
            if not text.endswith(REPLACEMENT_CHAR):
                status = refusal_status(text)
                self.decided = status == "answer"
                if status == "refusal":  # forwarded to the next agent: never streamed
                    self.ended = True
        if self.decided and len(self.tokens) > self.sent:
            new, self.sent = self.tokens[self.sent:], len(self.tokens)
            self.listener(new)


def stage_messages(messages: Sequence[Mapping[str, str]], alpha: float | None) -> list[dict[str, str]]:
    """The conversation an agent sees: under α the scenario instruction is the system message (as
    ``prompts.build_messages`` writes it), followed by the client's own system text if any;
    ``alpha=None`` (the last agent): the client's messages as they are."""
    messages = [dict(m) for m in messages]
    if alpha is None:
        return messages
    system = scenario_instruction(alpha)
    if messages and messages[0]["role"] == "system":
        system = f"{system}\n\n{messages[0]['content']}"
        messages = messages[1:]
    return [{"role": "system", "content": system}] + messages


@dataclasses.dataclass(frozen=True)
class StageRow:
    """One request at one stage: its prompt for this agent and its sampling parameters."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    key_id: int = 0

    @property
    def sampling_group(self) -> tuple:
        return ("greedy",) if self.temperature == 0.0 else ("sample", self.temperature, self.top_p)


@dataclasses.dataclass(frozen=True)
class StageReply:
    """What the agent said: its tokens (stop token excluded), text, decision and finish reason."""

    tokens: tuple[int, ...]
    text: str
    refused: bool
    finish_reason: str  # "stop" | "length" | "early_stop" (generation.FINISH_REASONS)

    @property
    def num_generated(self) -> int:
        """Decode steps paid, the stop token included (``engine.Reply.num_tokens``)."""
        return len(self.tokens) + (self.finish_reason == "stop")


class AgentStage:
    """An agent as a cascade stage (``last``: it gets the plain prompt and always answers)."""

    def __init__(self, agent: Agent, *, last: bool, max_batch_size: int, buckets: BucketConfig = BucketConfig(),
                 early_refusal: bool = True, stream_step_delay_s: float = 0.0):
        """``stream_step_delay_s``: drills only, a pause after every decode step of a call with
        a listened row (a test then sees tokens arrive while the agent is still generating)."""
        self.agent = agent
        self.last = last
        self.max_batch_size = max_batch_size
        self.buckets = buckets
        self.stream_step_delay_s = stream_step_delay_s
        # Served weights never change: split once (per call it is most of a small batch's host time).
        self.split = nnx.split(agent.model)
        ids = refusal_token_ids(agent)
        self.early_stop = refusal_early_stop(ids) if early_refusal and ids else None
        tokenizer = agent.tokenizer
        # Agents whose tokenizers agree (a pool of one family shares one) render a request once.
        self.tokenizer_key = hash((type(tokenizer).__name__, getattr(tokenizer, "chat_template", None),
                                   tuple(sorted(tokenizer.get_vocab().items()))))

    @property
    def name(self) -> str:
        return self.agent.name

    @property
    def cost(self) -> float:
        return self.agent.cost

    @property
    def context_length(self) -> int:
        return int(self.agent.model.config.max_position_embeddings)

    def prompt_key(self, alpha: float) -> tuple:
        """Equal for two stages exactly when their prompts for a request are equal."""
        return (self.tokenizer_key, None if self.last else alpha)

    def prompt_ids(self, messages: Sequence[Mapping[str, str]], alpha: float) -> list[int]:
        return chat_prompt_ids(self.agent.tokenizer, stage_messages(messages, None if self.last else alpha))

    def decode(self, tokens: Sequence[int]) -> str:
        return self.agent.decode(tokens)

    def run(self, rows: Sequence[StageRow], listeners: Sequence[Listener | None] | None = None) -> list[StageReply]:
        """One reply per row; ``listeners[i]`` (optional) gets row ``i``'s tokens as they come
        once it is sure to answer (module doc)."""
        replies: list[StageReply | None] = [None] * len(rows)
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row.sampling_group, []).append(i)
        stop_ids = frozenset(int(t) for t in self.agent.stop_token_ids)
        for indices in groups.values():
            first = rows[indices[0]]
            streams = {j: _RowStream(listeners[i], rows[i].max_new_tokens, stop_ids, self.decode, self.last)
                       for j, i in enumerate(indices) if listeners is not None and listeners[i] is not None}
            generations = generate(
                self.agent.model, [rows[i].prompt_ids for i in indices],
                max_new_tokens=max(rows[i].max_new_tokens for i in indices),
                temperature=first.temperature, top_p=first.top_p, num_samples=1,
                stop_token_ids=self.agent.stop_token_ids, mesh=self.agent.mesh, max_batch_size=self.max_batch_size,
                buckets=self.buckets, early_stop=self.early_stop, progress=False,
                key_ids=[rows[i].key_id for i in indices],
                # A call with a listened row runs the streaming program (never in the persistent
                # compilation cache: XLA cannot store host callbacks), the others the plain one.
                on_tokens=self._on_tokens(streams) if streams else None, split=self.split,
            )
            for i, (generation,) in zip(indices, generations):
                replies[i] = self._reply(generation.tokens, generation.finish_reason, rows[i].max_new_tokens)
        return replies  # type: ignore[return-value]

    def _on_tokens(self, streams: dict[int, _RowStream]):
        def on_tokens(step: int, prompt_index_r, token_r) -> None:
            for j, token in zip(prompt_index_r.tolist(), token_r.tolist()):
                stream = streams.get(j)
                if stream is not None:
                    stream.push(step, token)
            if self.stream_step_delay_s:
                time.sleep(self.stream_step_delay_s)

        return on_tokens

    def _reply(self, tokens: np.ndarray, finish_reason: str, budget: int) -> StageReply:
        paid = len(tokens) + (finish_reason == "stop")
        if paid > budget:  # ran past this row's own budget in a call with a larger one
            tokens, finish_reason = tokens[:budget], "length"
        text = self.agent.decode(tokens)
        return StageReply(tuple(int(t) for t in tokens), text, is_refusal(text), finish_reason)

    def text_deltas(self, tokens: Sequence[int], content: str) -> list[str]:
        """``content`` (the reply, perhaps cut at a stop string) as one piece per token, for
        streaming: each piece is what that token adds to the decoded text. A token that ends
        inside a multi-byte character adds nothing until the character is complete; the pieces
        always join to exactly ``content``."""
        pieces, sent = [], 0
        for end in range(1, len(tokens) + 1):
            text = self.agent.decode(tokens[:end])
            if text.endswith(REPLACEMENT_CHAR) or not content.startswith(text[:len(content)]):
                continue
            upto = min(len(text), len(content))
            if upto > sent:
                pieces.append(content[sent:upto])
                sent = upto
        if sent < len(content):
            pieces.append(content[sent:])
        return pieces

    def warm_lengths(self, shortest: int) -> list[int]:
        """A prompt length in each prompt bucket a request can reach: from ``shortest`` (the
        stage's prompt for the shortest message: a scenario prompt holds the whole instruction)
        up to the context (prompt + 1 token); without explicit buckets, ``shortest`` only."""
        if self.buckets.prompt_lengths is None:
            return [shortest]
        lengths, below = [], 0
        for bucket in self.buckets.prompt_lengths:
            length = min(bucket, self.context_length - 1)
            if length > below and bucket >= shortest:
                lengths.append(max(length, shortest))
            below = bucket
        return lengths

    def warm(self, batch_sizes: Sequence[int], prompt_ids: Sequence[int], max_new_tokens: int,
             lengths: Sequence[int] | None = None, streaming: bool = False) -> None:
        """Compiles the greedy prefill and decode programs of every batch size x prompt length
        (default: :meth:`warm_lengths`, one per prompt bucket): ``prompt_ids`` repeated to each
        length (only the shapes matter); ``streaming``: the streaming decode programs too.
        Sampled requests compile their own on first use."""
        for length in self.warm_lengths(len(prompt_ids)) if lengths is None else lengths:
            ids = tuple((list(prompt_ids) * (length // len(prompt_ids) + 1))[:length])
            for size in batch_sizes:
                self.run([StageRow(ids, max_new_tokens)] * size)
                if streaming:
                    self.run([StageRow(ids, max_new_tokens)] * size, [lambda tokens: None] * size)
