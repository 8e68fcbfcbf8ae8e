"""Stand-in cascade stages without a model, for batcher and HTTP fault tests.

A prompt is the bytes of the last message's text. A stage answers ``"<name>: <text>"`` unless the
text contains ``refuse:<name>`` (it replies the refusal) or ``fail:<name>`` (``run`` raises, as a
broken agent would); ``slow:<seconds>`` makes its batch take that long. Every batch it runs is
recorded in ``batches`` (the texts of its rows). Listened rows (streaming) get their reply's
tokens (bytes) one by one before ``run`` returns, unless the stage forwards them.
"""

from __future__ import annotations

import re
import threading
import time

from disrouter_jax.cascade.serving.stage import StageReply
from disrouter_jax.tasks.prompts import REFUSAL


class StubStage:
    context_length = 200

    def __init__(self, name: str, *, last: bool = False, cost: float = 0.5):
        self.name, self.last, self.cost = name, last, cost
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def prompt_key(self, alpha) -> tuple:
        return (self.name, alpha)

    def prompt_ids(self, messages, alpha) -> list[int]:
        return list(messages[-1]["content"].encode())

    def run(self, rows, listeners=None) -> list[StageReply]:
        texts = [bytes(row.prompt_ids).decode() for row in rows]
        with self.lock:
            self.batches.append(texts)
        if any(f"fail:{self.name}" in t for t in texts):
            raise RuntimeError(f"{self.name} is broken")
        delays = [float(m.group(1)) for t in texts for m in [re.search(r"slow:([0-9.]+)", t)] if m]
        if delays:
            time.sleep(max(delays))
        replies = []
        for row, text in zip(rows, texts):
            refused = f"refuse:{self.name}" in text
            reply = REFUSAL if refused else f"{self.name}: {text}"[: row.max_new_tokens * 4]
            replies.append(StageReply(tuple(reply.encode()), reply, refused, "early_stop" if refused else "stop"))
        for listener, reply in zip(listeners or [None] * len(rows), replies):
            if listener is not None and not (reply.refused and not self.last):
                for token in reply.tokens:  # as a generating agent streams: one token at a time
                    listener([token])
        return replies

    def decode(self, tokens) -> str:
        return bytes(tokens).decode("utf-8", errors="replace")

    def text_deltas(self, tokens, content: str) -> list[str]:
        return list(content)

    def warm_lengths(self, prompt_length: int) -> list[int]:
        return [prompt_length]

    def warm(self, batch_sizes, prompt_ids, max_new_tokens, lengths=None, streaming=False) -> None:
        pass

    @property
    def rows_seen(self) -> list[str]:
        return [text for batch in self.batches for text in batch]


def stub_pool(*names: str) -> list[StubStage]:
    return [StubStage(name, last=k == len(names) - 1) for k, name in enumerate(names)]
