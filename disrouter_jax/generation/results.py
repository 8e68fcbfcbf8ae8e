"""What ``generate`` returns for one sample of one prompt."""

from __future__ import annotations

import dataclasses

import numpy as np

FINISH_REASONS = ("stop", "length", "early_stop")


@dataclasses.dataclass(frozen=True, eq=False)
class Generation:
    """One continuation.

    ``tokens`` (int32) and ``logprobs`` (float32, same length): the generated token ids and their
    log-probs under the unmodified model (temperature 1). They end before the stop token unless
    ``generate(include_stop=True)``; ``stop_token`` is the stop token that ended the sequence
    (``finish_reason == "stop"``), else ``None``. ``finish_reason``: "stop" (a stop token),
    "length" (``max_new_tokens`` reached) or "early_stop" (the ``early_stop`` predicate).
    ``sampling_logprobs`` (float32, same length): log-probs under ``logits / temperature``
    (without top-k/top-p truncation; the same as ``logprobs`` for greedy decoding).
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    finish_reason: str
    stop_token: int | None = None
    sampling_logprobs: np.ndarray | None = None

    def __post_init__(self):
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(
                f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}"
            )
        if len(self.tokens) != len(self.logprobs):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.logprobs)} logprobs")
        if self.sampling_logprobs is not None and len(self.sampling_logprobs) != len(self.tokens):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.sampling_logprobs)} "
                             "sampling_logprobs")

    @property
    def token_list(self) -> list[int]:
        return [int(t) for t in self.tokens]
